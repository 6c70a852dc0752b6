//! The read model the token core reads, built from resources: ServiceAccounts (with the
//! verifiers in their status) and TokenGrants become a [`Registry`]. In a cluster the
//! resources come from reflector stores; in `dev` from manifest files. Either way the same
//! pure function builds it, and the core swaps it in whole.

use std::collections::BTreeMap;

use kube::ResourceExt;

use crate::api::service_account::CredentialType;
use crate::api::{ServiceAccount, TokenGrant};
use crate::crypto;
use crate::service_account::from_time;
use crate::token::registry::{DelegationRule, FederatedMatch};
use crate::token::{Api, Client, ClientKey, Grant, Registry, SecretVerifier};

/// `namespace/name` of an object.
pub fn key_of<K: ResourceExt>(obj: &K) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// Who claims each `spec.api.audience`: the oldest claim wins (creation time, then
/// `namespace/name`), so a later claim can never take an audience away.
pub fn audience_claims(accounts: &[ServiceAccount]) -> BTreeMap<String, String> {
    let mut claimants: Vec<&ServiceAccount> =
        accounts.iter().filter(|a| a.spec.api.is_some()).collect();
    claimants.sort_by(|a, b| {
        let ka = (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            key_of(*a),
        );
        let kb = (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            key_of(*b),
        );
        ka.cmp(&kb)
    });
    let mut claims = BTreeMap::new();
    for a in claimants {
        let audience = a.spec.api.as_ref().expect("filtered").audience.clone();
        claims.entry(audience).or_insert_with(|| key_of(a));
    }
    claims
}

/// Builds the registry. Accounts without a client id yet are skipped; keys that do not
/// parse are skipped with a warning (the controller reports them on the account).
pub fn build_registry(
    accounts: &[ServiceAccount],
    grants: &[TokenGrant],
    allow_unclaimed_audiences: bool,
) -> Registry {
    let mut registry = Registry::new(allow_unclaimed_audiences);
    let claims = audience_claims(accounts);
    for a in accounts {
        let namespace = a.namespace().unwrap_or_default();
        if let Some(api) = &a.spec.api
            && claims.get(&api.audience) == Some(&key_of(a))
        {
            registry.add_api(Api {
                audience: api.audience.clone(),
                namespace: namespace.clone(),
                owner: a.name_any(),
                scopes: api.scopes.iter().map(|s| s.name.clone()).collect(),
            });
        }
        let Some(status) = &a.status else { continue };
        let Some(client_id) = &status.client_id else {
            continue;
        };
        let mut secrets = vec![];
        let mut keys = vec![];
        for c in &status.credentials {
            let not_after = c.not_after.as_ref().map(from_time);
            match c.type_ {
                CredentialType::ClientSecret => {
                    if let Some(digest) = &c.secret_digest {
                        secrets.push(SecretVerifier {
                            digest: digest.clone(),
                            not_after,
                        });
                    }
                }
                CredentialType::PrivateKey => {
                    let Some(jwk) = &c.public_key else { continue };
                    match crypto::decoding_key(jwk) {
                        Ok((key, algorithm)) => keys.push(ClientKey {
                            kid: c.id.clone(),
                            algorithm,
                            key,
                            not_after,
                        }),
                        Err(e) => {
                            tracing::warn!(account = %key_of(a), error = %e, "unusable public key")
                        }
                    }
                }
            }
        }
        registry.add_client(Client {
            client_id: client_id.clone(),
            namespace,
            name: a.name_any(),
            scopes: a.spec.scopes.clone(),
            audiences: a.spec.audiences.clone(),
            token_lifetime: a.spec.token_lifetime.as_std(),
            disabled: a.spec.disabled,
            secrets,
            keys,
            federated: federated_matches(a),
        });
    }
    for g in grants.iter().filter(|g| !g.spec.revoked) {
        let namespace = g.namespace().unwrap_or_default();
        let grant = Grant {
            namespace: namespace.clone(),
            name: g.name_any(),
            uid: g.uid().unwrap_or_default(),
            audience: g.spec.audience.clone(),
            scopes: g.spec.scopes.clone(),
            tenant: g.spec.tenant.clone(),
            delegation: g.spec.delegation.as_ref().map(|d| DelegationRule {
                issuers: d
                    .issuers
                    .iter()
                    .map(|r| format!("{}/{}", r.namespace_or(&namespace), r.name))
                    .collect(),
                subjects: d.subjects.clone(),
            }),
        };
        let subject = &g.spec.subject;
        if let Some(sa) = &subject.service_account {
            registry.add_grant(sa.namespace_or(&namespace), &sa.name, grant);
        } else if let (Some(issuer), Some(sub)) = (&subject.issuer_ref, &subject.subject) {
            let issuer = format!("{}/{}", issuer.namespace_or(&namespace), issuer.name);
            registry.add_issuer_grant(&issuer, sub, grant);
        }
    }
    registry
}

/// An account's `federated` entries, with issuer references made `namespace/name`.
fn federated_matches(a: &ServiceAccount) -> Vec<FederatedMatch> {
    let namespace = a.namespace().unwrap_or_default();
    a.spec
        .authentication
        .as_ref()
        .and_then(|auth| auth.federated.as_ref())
        .into_iter()
        .flatten()
        .map(|f| FederatedMatch {
            issuer: format!(
                "{}/{}",
                f.issuer_ref.namespace_or(&namespace),
                f.issuer_ref.name
            ),
            subject: f.subject.clone(),
            audience: f.audience.clone(),
            claims: f
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(yaml: &str) -> ServiceAccount {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_oldest_claim_of_an_audience_wins() {
        let older = sa(r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: b, namespace: y, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {api: {audience: "https://x"}}
"#);
        let newer = sa(r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: a, namespace: x, creationTimestamp: "2026-02-01T00:00:00Z"}
spec: {api: {audience: "https://x"}}
"#);
        let claims = audience_claims(&[newer.clone(), older.clone()]);
        assert_eq!(claims["https://x"], "y/b");
        let registry = build_registry(&[newer, older], &[], false);
        assert_eq!(registry.api("https://x").unwrap().namespace, "y");
    }

    #[test]
    fn grants_only_open_audiences_owned_in_their_namespace() {
        let api = sa(r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec: {api: {audience: "https://orders"}}
"#);
        let mut caller = sa(r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  audiences: ["https://orders", "https://unclaimed"]
  authentication: {clientSecret: {secretName: s}}
"#);
        caller.status = Some(crate::api::ServiceAccountStatus {
            client_id: Some("c1".into()),
            ..Default::default()
        });
        let grant = |ns: &str, aud: &str| -> TokenGrant {
            serde_yaml::from_str(&format!(
                r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: g, namespace: {ns}}}
spec: {{subject: {{serviceAccount: {{name: worker, namespace: team}}}}, audience: "{aud}"}}
"#
            ))
            .unwrap()
        };
        let grants = [
            grant("shop", "https://orders"),
            grant("elsewhere", "https://orders"),
            grant("team", "https://unclaimed"),
        ];
        let registry = build_registry(&[api.clone(), caller.clone()], &grants, false);
        let client = registry.client("c1").unwrap();
        let found = registry.grants_for(client, "https://orders");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].namespace, "shop");
        assert!(registry.grants_for(client, "https://unclaimed").is_empty());
        let open = build_registry(&[api, caller], &grants, true);
        assert_eq!(
            open.grants_for(open.client("c1").unwrap(), "https://unclaimed")
                .len(),
            1
        );
    }

    #[test]
    fn grants_are_live_by_uid_unless_revoked() {
        let grant = |name: &str, uid: &str, revoked: bool| -> TokenGrant {
            let mut g: TokenGrant = serde_yaml::from_str(&format!(
                r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: {name}, namespace: shop}}
spec: {{subject: {{serviceAccount: {{name: worker, namespace: team}}}}, audience: "https://orders", revoked: {revoked}}}
"#
            ))
            .unwrap();
            g.metadata.uid = Some(uid.into());
            g
        };
        let registry = build_registry(
            &[],
            &[grant("kept", "uid-1", false), grant("cut", "uid-2", true)],
            true,
        );
        assert!(registry.grant_live("uid-1"));
        assert!(
            !registry.grant_live("uid-2"),
            "a revoked grant is not in force"
        );
        assert!(!registry.grant_live("uid-3"));
        assert!(!registry.grant_live(""));
    }
}
