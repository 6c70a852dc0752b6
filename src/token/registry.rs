//! The read model the token core works from: clients, the APIs they may call and the grants
//! that let them, as plain data. Built by `crate::store` from resources (reflectors in a
//! cluster, manifest files in `dev`), swapped in whole on every change, read lock-free.

use std::collections::HashMap;
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
    /// The audience it opens.
    pub audience: String,
    /// Scopes it grants (may hold trailing wildcards).
    pub scopes: Vec<String>,
    /// Tenant it stands for.
    pub tenant: Option<String>,
}

/// Everything the token core needs to decide, immutable once built.
#[derive(Debug, Default)]
pub struct Registry {
    clients: HashMap<String, Arc<Client>>,
    apis: HashMap<String, Api>,
    /// Grants by (subject namespace, subject name).
    grants: HashMap<(String, String), Vec<Grant>>,
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
        self.grants
            .entry((subject_namespace.to_owned(), subject_name.to_owned()))
            .or_default()
            .push(grant);
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
        let Some(grants) = self
            .grants
            .get(&(client.namespace.clone(), client.name.clone()))
        else {
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
