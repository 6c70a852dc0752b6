//! The read model the token core works from: clients, the APIs they may call and the grants
//! that let them, as plain data. Built by `crate::store` from resources (reflectors in a
//! cluster, manifest files in `dev`), swapped in whole on every change, read lock-free.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey};

/// A ServiceAccount as the token server knows it: verifiers, never secrets.
#[derive(Clone)]
pub struct Client {
    /// OAuth 2.0 client id.
    pub client_id: String,
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// Name of the ServiceAccount.
    pub name: String,
    /// The account's scope ceiling (may hold trailing wildcards).
    pub scopes: Vec<String>,
    /// Audiences the account may ask for.
    pub audiences: Vec<String>,
    /// Lifetime of its tokens.
    pub token_lifetime: Duration,
    /// A disabled client authenticates as nobody.
    pub disabled: bool,
    /// Digests of the client secrets that verify now.
    pub secrets: Vec<SecretVerifier>,
    /// Public keys for `private_key_jwt`.
    pub keys: Vec<ClientKey>,
    /// External identities that authenticate as this client (`federated`).
    pub federated: Vec<FederatedMatch>,
}

/// One `spec.authentication.federated` entry: a JWT from `issuer` whose `sub` matches
/// `subject` (with `*` wildcards) authenticates as the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederatedMatch {
    /// The TrustedIssuer, `namespace/name`.
    pub issuer: String,
    /// The `sub` pattern.
    pub subject: String,
    /// An audience the JWT must carry as well.
    pub audience: Option<String>,
    /// Claims the JWT must carry with exactly these string values.
    pub claims: Vec<(String, String)>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// A client secret's digest and when it stops verifying.
#[derive(Clone, Debug)]
pub struct SecretVerifier {
    /// `sha256:…`.
    pub digest: String,
    /// End of the grace period for a rotated-out secret.
    pub not_after: Option<SystemTime>,
}

/// A client's public key.
#[derive(Clone)]
pub struct ClientKey {
    /// Key id.
    pub kid: String,
    /// The one algorithm this key verifies.
    pub algorithm: Algorithm,
    /// The key.
    pub key: DecodingKey,
    /// End of the grace period for a rotated-out key.
    pub not_after: Option<SystemTime>,
}

/// An API (an account's `spec.api`): who owns the audience and which scopes exist.
#[derive(Clone, Debug)]
pub struct Api {
    /// The audience.
    pub audience: String,
    /// Namespace of the owning account: only grants in this namespace count.
    pub namespace: String,
    /// Name of the owning account.
    pub owner: String,
    /// Scopes the API defines; empty when it defines none.
    pub scopes: Vec<String>,
}

/// A TokenGrant whose subject is one of our accounts.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Namespace of the grant.
    pub namespace: String,
    /// Name of the grant.
    pub name: String,
    /// `metadata.uid` of the grant: tokens name it (claim `grants`), so a deleted grant's
    /// tokens are void even if the name comes back. Empty when unknown (not tracked).
    pub uid: String,
    /// The audience it opens.
    pub audience: String,
    /// Scopes it grants (may hold trailing wildcards).
    pub scopes: Vec<String>,
    /// Tenant it stands for.
    pub tenant: Option<String>,
    /// Whose tokens the subject may exchange for tokens on their behalf (RFC 8693).
    pub delegation: Option<DelegationRule>,
}

/// A grant's `spec.delegation`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DelegationRule {
    /// TrustedIssuers (`namespace/name`) whose tokens may be exchanged; ours always may.
    pub issuers: Vec<String>,
    /// `sub` patterns (with `*`) of exchangeable tokens; any when empty.
    pub subjects: Vec<String>,
}

/// Whether `value` matches `pattern`, where each `*` stands for any run of characters
/// (possibly empty) and everything else is literal.
pub fn wildcard_match(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if value.len() < first.len() + last.len() || !value.starts_with(first) || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Everything the token core needs to decide, immutable once built.
#[derive(Debug, Default)]
pub struct Registry {
    clients: HashMap<String, Arc<Client>>,
    apis: HashMap<String, Api>,
    /// Grants by (subject namespace, subject name).
    grants: HashMap<(String, String), Vec<Grant>>,
    /// Grants whose subject is an external identity: by (TrustedIssuer `namespace/name`,
    /// exact `sub`).
    issuer_grants: HashMap<(String, String), Vec<Grant>>,
    /// uids of every grant in force (not deleted, not revoked): a token naming any other is
    /// void. One hash lookup per named grant keeps introspection cheap.
    live_grants: HashSet<String>,
    allow_unclaimed_audiences: bool,
}

impl Registry {
    /// An empty registry; `allow_unclaimed_audiences` is the operator-wide switch that lets a
    /// grant name an audience no account claims (small single-team clusters).
    pub fn new(allow_unclaimed_audiences: bool) -> Self {
        Self {
            allow_unclaimed_audiences,
            ..Self::default()
        }
    }

    /// Adds a client.
    pub fn add_client(&mut self, client: Client) {
        self.clients
            .insert(client.client_id.clone(), Arc::new(client));
    }

    /// Adds an API. The caller has settled conflicts: the first claim of an audience wins.
    pub fn add_api(&mut self, api: Api) {
        self.apis.entry(api.audience.clone()).or_insert(api);
    }

    /// Adds a grant for the account `subject_namespace/subject_name`.
    pub fn add_grant(&mut self, subject_namespace: &str, subject_name: &str, grant: Grant) {
        self.note_live(&grant);
        self.grants
            .entry((subject_namespace.to_owned(), subject_name.to_owned()))
            .or_default()
            .push(grant);
    }

    /// Adds a grant for the external subject `sub` of the TrustedIssuer `issuer`
    /// (`namespace/name`).
    pub fn add_issuer_grant(&mut self, issuer: &str, sub: &str, grant: Grant) {
        self.note_live(&grant);
        self.issuer_grants
            .entry((issuer.to_owned(), sub.to_owned()))
            .or_default()
            .push(grant);
    }

    fn note_live(&mut self, grant: &Grant) {
        if !grant.uid.is_empty() {
            self.live_grants.insert(grant.uid.clone());
        }
    }

    /// Whether the grant with this uid is in force (exists and is not revoked).
    pub fn grant_live(&self, uid: &str) -> bool {
        !uid.is_empty() && self.live_grants.contains(uid)
    }

    /// A client by id.
    pub fn client(&self, client_id: &str) -> Option<&Arc<Client>> {
        self.clients.get(client_id)
    }

    /// Every client.
    pub fn clients(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.clients.values()
    }

    /// The API that claims an audience.
    pub fn api(&self, audience: &str) -> Option<&Api> {
        self.apis.get(audience)
    }

    /// Whether the client owns (through its account's `spec.api`) the audience.
    pub fn owns_audience(&self, client: &Client, audience: &str) -> bool {
        self.apis
            .get(audience)
            .is_some_and(|a| a.namespace == client.namespace && a.owner == client.name)
    }

    /// The grants that let `client` get tokens for `audience`: those naming it as subject, in
    /// the namespace of the account that claims the audience. A grant anywhere else opens
    /// nothing.
    pub fn grants_for<'a>(&'a self, client: &Client, audience: &str) -> Vec<&'a Grant> {
        self.in_owner_namespace(
            self.grants
                .get(&(client.namespace.clone(), client.name.clone())),
            audience,
        )
    }

    /// The grants that let the external subject `sub` of TrustedIssuer `issuer` get tokens
    /// for `audience` (the JWT-bearer grant), under the same namespace rule.
    pub fn issuer_grants_for<'a>(
        &'a self,
        issuer: &str,
        sub: &str,
        audience: &str,
    ) -> Vec<&'a Grant> {
        self.in_owner_namespace(
            self.issuer_grants.get(&(issuer.to_owned(), sub.to_owned())),
            audience,
        )
    }

    /// Audiences some grant opens to the external subject (to pick one when none is asked).
    pub fn issuer_grant_audiences(&self, issuer: &str, sub: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .issuer_grants
            .get(&(issuer.to_owned(), sub.to_owned()))
            .into_iter()
            .flatten()
            .map(|g| g.audience.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Every grant standing for a tenant that lets `client` get tokens (under the namespace
    /// rule), sorted by tenant then audience.
    pub fn tenant_grants<'a>(&'a self, client: &Client) -> Vec<&'a Grant> {
        let Some(grants) = self
            .grants
            .get(&(client.namespace.clone(), client.name.clone()))
        else {
            return vec![];
        };
        let mut out: Vec<&Grant> = grants
            .iter()
            .filter(|g| g.tenant.is_some())
            .filter(|g| match self.apis.get(&g.audience) {
                Some(api) => api.namespace == g.namespace,
                None => self.allow_unclaimed_audiences,
            })
            .collect();
        out.sort_by(|a, b| (&a.tenant, &a.audience).cmp(&(&b.tenant, &b.audience)));
        out
    }

    fn in_owner_namespace<'a>(
        &self,
        grants: Option<&'a Vec<Grant>>,
        audience: &str,
    ) -> Vec<&'a Grant> {
        let Some(grants) = grants else {
            return vec![];
        };
        let owner_namespace = self.apis.get(audience).map(|a| a.namespace.as_str());
        grants
            .iter()
            .filter(|g| g.audience == audience)
            .filter(|g| match owner_namespace {
                Some(ns) => g.namespace == ns,
                None => self.allow_unclaimed_audiences,
            })
            .collect()
    }
}

/// The `grants` claim entry naming a grant: `namespace/name/uid` (names cannot hold `/`).
/// `None` for a grant without a uid, which cannot be tracked.
pub fn grant_ref(grant: &Grant) -> Option<String> {
    (!grant.uid.is_empty()).then(|| grant_claim(&grant.namespace, &grant.name, &grant.uid))
}

/// A `grants` claim entry from its parts.
pub fn grant_claim(namespace: &str, name: &str, uid: &str) -> String {
    format!("{namespace}/{name}/{uid}")
}

/// The `grants` claim of a token minted under these grants: each named once, sorted, so
/// the claim does not depend on the order grants were found in.
pub fn grant_refs<'a>(grants: impl IntoIterator<Item = &'a Grant>) -> Vec<String> {
    let mut out: Vec<String> = grants.into_iter().filter_map(grant_ref).collect();
    out.sort();
    out.dedup();
    out
}

/// The uid in a `grants` claim entry (after the last `/`).
pub fn grant_ref_uid(entry: &str) -> Option<&str> {
    entry.rsplit_once('/').map(|(_, uid)| uid)
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards_stand_for_any_run_and_nothing_else() {
        let p = "system:serviceaccount:team-a:*";
        assert!(wildcard_match(p, "system:serviceaccount:team-a:worker"));
        assert!(wildcard_match(p, "system:serviceaccount:team-a:"));
        assert!(!wildcard_match(p, "system:serviceaccount:team-ab:worker"));
        assert!(!wildcard_match(p, "system:serviceaccount:team-a"));
        assert!(wildcard_match(
            "repo:org/*:ref:refs/heads/main",
            "repo:org/app:ref:refs/heads/main"
        ));
        assert!(!wildcard_match(
            "repo:org/*:ref:refs/heads/main",
            "repo:org/app:ref:refs/heads/dev"
        ));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("a*b*c", "aXcYb"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exactly"));
        assert!(
            !wildcard_match("ab*ba", "aba"),
            "prefix and suffix may not overlap"
        );
    }
}
