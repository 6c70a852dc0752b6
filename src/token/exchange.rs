//! Tokens for identities from trusted issuers: federated client authentication (a JWT from
//! a TrustedIssuer as `client_assertion`), the JWT-bearer grant (RFC 7523 §2.1), and token
//! exchange (RFC 8693) with impersonation and delegation (`act`, `may_act`).
//!
//! External JWTs are validated by [`Issuers`](crate::trusted_issuer::verify::Issuers)
//! (RFC 8725 rules per issuer); this module decides what an accepted JWT may get.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::audience::Audience;
use super::core::{AccessClaims, Core, Mint, TokenResponse, authorize, requested_audiences, unix};
use super::error::{ErrorCode, OAuthError};
use super::registry::{Client, FederatedMatch, Grant, Registry, grant_refs, wildcard_match};
use super::request::{ClientAuth, Params};
use crate::trusted_issuer::verify::{Verified, VerifyError};

/// RFC 8693 token type of an access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// RFC 8693 token type of a JWT.
pub const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Lifetime of a JWT-bearer token (no account says otherwise).
const JWT_BEARER_LIFETIME: Duration = Duration::from_secs(3600);

/// Whose token is being exchanged.
struct Subject {
    /// `sub`.
    sub: String,
    /// Our own token, or the TrustedIssuer (`namespace/name`) that accepted it.
    issuer: Option<String>,
    /// When it expires: nothing issued on its behalf outlives it.
    exp: u64,
    /// Its `act` (prior actors), kept nested in what we issue.
    act: Option<Value>,
    /// Its `may_act` (RFC 8693 §4.4): who may act for it.
    may_act: Option<Value>,
}

impl Core {
    /// Validates an external JWT against every trusted issuer, asking for a key refresh when
    /// it names an unknown key.
    fn verify_external(&self, jwt: &str) -> Result<Vec<Verified>, VerifyError> {
        let now = unix(self.clock.now());
        let result = self.issuers.load().verify_any(jwt, now);
        if let Err(VerifyError::UnknownKid { trusted_issuer, .. }) = &result {
            let hook = self.unknown_kid.lock().expect("not poisoned").clone();
            if let Some(hook) = hook {
                hook(trusted_issuer);
            }
        }
        result
    }

    /// A JWT from a trusted issuer as `client_assertion`: it authenticates as the account
    /// whose `federated` entries match it (the one named by `client_id`, or the only one).
    pub(super) fn verify_federated(
        &self,
        registry: &Registry,
        client_id: Option<&str>,
        assertion: &str,
    ) -> Result<Arc<Client>, OAuthError> {
        let accepted = self.verify_external(assertion).map_err(|e| {
            tracing::debug!(error = %e, "federated assertion refused");
            OAuthError::invalid_client()
        })?;
        let matches = |c: &Client| {
            accepted
                .iter()
                .any(|v| c.federated.iter().any(|m| federated_match(m, v)))
        };
        let client = match client_id {
            Some(id) => registry
                .client(id)
                .filter(|c| matches(c))
                .cloned()
                .ok_or_else(OAuthError::invalid_client)?,
            None => {
                let found: Vec<&Arc<Client>> = registry.clients().filter(|c| matches(c)).collect();
                match found.as_slice() {
                    [one] => (*one).clone(),
                    [] => return Err(OAuthError::invalid_client()),
                    _ => {
                        return Err(OAuthError::new(
                            ErrorCode::InvalidClient,
                            "several accounts accept this identity: send client_id",
                        ));
                    }
                }
            }
        };
        Ok(client)
    }

    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` (RFC 7523 §2.1): a JWT from a
    /// trusted issuer whose subject a TokenGrant names gets a token for the grant's audience.
    /// Client authentication is optional; when present, the token names that client.
    pub(super) fn jwt_bearer(
        &self,
        auth: &ClientAuth,
        params: &Params,
    ) -> Result<TokenResponse, OAuthError> {
        let registry = self.registry.load();
        let client = match auth {
            ClientAuth::None => None,
            other => Some(self.authenticate(&registry, other)?),
        };
        let assertion = params
            .get("assertion")
            .ok_or_else(|| OAuthError::invalid_request("assertion is required"))?;
        let accepted = self.verify_external(assertion).map_err(|e| {
            OAuthError::new(ErrorCode::InvalidGrant, format!("assertion refused: {e}"))
        })?;
        let asked = requested_audiences(params)?;
        let everything = ["*".to_owned()];
        for v in &accepted {
            let audience = match &asked {
                Some(a) => a.clone(),
                None => match registry
                    .issuer_grant_audiences(&v.trusted_issuer, &v.sub)
                    .as_slice()
                {
                    [only] => Audience::one(only.clone()),
                    [] => continue,
                    _ => {
                        return Err(OAuthError::invalid_target(
                            "name the audience (audience or resource parameter)",
                        ));
                    }
                },
            };
            let granted =
                match authorize(&registry, &audience, &everything, &params.scopes(), |aud| {
                    registry.issuer_grants_for(&v.trusted_issuer, &v.sub, aud)
                }) {
                    Ok(granted) => granted,
                    // No grant for this issuer's subject: another accepted issuer may have one.
                    Err(Err(_)) => continue,
                    Err(Ok(e)) => return Err(e),
                };
            let now = unix(self.clock.now());
            let lifetime =
                JWT_BEARER_LIFETIME.min(Duration::from_secs(v.exp.saturating_sub(now).max(1)));
            return self.mint(Mint {
                sub: v.sub.clone(),
                client_id: client
                    .as_ref()
                    .map_or_else(|| v.sub.clone(), |c| c.client_id.clone()),
                lifetime,
                audience,
                scope: granted.scope,
                tenant: granted.tenant,
                act: None,
                grants: grant_refs(granted.grants),
            });
        }
        Err(OAuthError::invalid_target(
            "no TokenGrant lets this subject get tokens for that audience",
        ))
    }

    /// `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` (RFC 8693). The client
    /// authenticates; the `subject_token` is one of our access tokens or a trusted issuer's
    /// JWT. Exchanging its own token is impersonation (no `act`); anyone else's is delegation,
    /// allowed only by a TokenGrant with `delegation` that covers the subject, and the new
    /// token keeps the subject's `sub` and says who acts in `act` (prior actors nested).
    pub(super) fn token_exchange(
        &self,
        auth: &ClientAuth,
        params: &Params,
    ) -> Result<TokenResponse, OAuthError> {
        let registry = self.registry.load();
        let client = self.authenticate(&registry, auth)?;
        if let Some(t) = params.get("requested_token_type")
            && t != ACCESS_TOKEN_TYPE
            && t != JWT_TYPE
        {
            return Err(OAuthError::invalid_request(format!(
                "requested_token_type {t} cannot be issued"
            )));
        }
        let subject_token = params
            .get("subject_token")
            .ok_or_else(|| OAuthError::invalid_request("subject_token is required"))?;
        let subject_type = params
            .get("subject_token_type")
            .ok_or_else(|| OAuthError::invalid_request("subject_token_type is required"))?;
        if subject_type != ACCESS_TOKEN_TYPE && subject_type != JWT_TYPE {
            return Err(OAuthError::invalid_request(format!(
                "subject_token_type {subject_type} is not supported"
            )));
        }
        if let Some(actor) = params.get("actor_token") {
            // The actor is the authenticated client; an actor token must say the same.
            if params.get("actor_token_type").is_none() {
                return Err(OAuthError::invalid_request(
                    "actor_token_type is required with actor_token",
                ));
            }
            let same = self
                .verify_own(actor)
                .is_some_and(|c| c.sub == client.client_id)
                || self.verify_external(actor).is_ok_and(|vs| {
                    vs.iter()
                        .any(|v| client.federated.iter().any(|m| federated_match(m, v)))
                });
            if !same {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "actor_token does not identify the authenticated client",
                ));
            }
        }
        let subject = self.exchange_subject(subject_token)?;
        let audience = self.audiences(&client, params)?;
        let own = subject.issuer.is_none() && subject.sub == client.client_id;
        let granted = authorize(
            &registry,
            &audience,
            &client.scopes,
            &params.scopes(),
            |aud| {
                registry
                    .grants_for(&client, aud)
                    .into_iter()
                    .filter(|g| own || delegation_allows(g, &subject))
                    .collect()
            },
        )
        .map_err(|e| {
            e.unwrap_or_else(|aud| {
                if own {
                    OAuthError::invalid_target(format!(
                        "no TokenGrant lets this client get tokens for {aud}"
                    ))
                } else {
                    OAuthError::new(
                        ErrorCode::UnauthorizedClient,
                        format!("no TokenGrant lets this client act for that subject at {aud}"),
                    )
                }
            })
        })?;
        if !own && let Some(may_act) = &subject.may_act {
            let allowed = may_act.get("sub").and_then(Value::as_str)
                == Some(client.client_id.as_str())
                && may_act
                    .get("iss")
                    .and_then(Value::as_str)
                    .is_none_or(|iss| iss == self.config.issuer);
            if !allowed {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "the subject token's may_act does not name this client",
                ));
            }
        }
        let now = unix(self.clock.now());
        let remaining = Duration::from_secs(subject.exp.saturating_sub(now).max(1));
        let act = (!own).then(|| {
            let mut act = json!({ "sub": client.client_id });
            if let Some(prior) = &subject.act {
                act["act"] = prior.clone();
            }
            act
        });
        let mut resp = self.mint(Mint {
            sub: subject.sub.clone(),
            client_id: client.client_id.clone(),
            lifetime: client.token_lifetime.min(remaining),
            audience,
            scope: granted.scope,
            tenant: granted.tenant,
            act,
            grants: grant_refs(granted.grants),
        })?;
        resp.issued_token_type = Some(ACCESS_TOKEN_TYPE.into());
        Ok(resp)
    }

    /// The subject of an exchange: our own unrevoked token, or a trusted issuer's JWT.
    fn exchange_subject(&self, token: &str) -> Result<Subject, OAuthError> {
        let now = unix(self.clock.now());
        if let Some(c) = self.verify_own(token) {
            if self.is_void(&c, now) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "subject_token is revoked",
                ));
            }
            return Ok(own_subject(c));
        }
        let accepted = self.verify_external(token).map_err(|e| {
            OAuthError::new(
                ErrorCode::InvalidGrant,
                format!("subject_token refused: {e}"),
            )
        })?;
        let v = accepted
            .into_iter()
            .next()
            .expect("verify_any returns at least one");
        Ok(Subject {
            sub: v.sub,
            issuer: Some(v.trusted_issuer),
            exp: v.exp,
            act: v.claims.get("act").cloned(),
            may_act: v.claims.get("may_act").cloned(),
        })
    }
}

fn own_subject(c: AccessClaims) -> Subject {
    Subject {
        sub: c.sub,
        issuer: None,
        exp: c.exp,
        act: c.act,
        may_act: None,
    }
}

/// Whether a grant's `delegation` covers the subject: our own tokens always qualify as to
/// issuer, external ones only from a listed TrustedIssuer; `subjects` empty means any.
fn delegation_allows(g: &Grant, s: &Subject) -> bool {
    let Some(rule) = &g.delegation else {
        return false;
    };
    let issuer_ok = s.issuer.as_ref().is_none_or(|i| rule.issuers.contains(i));
    let subject_ok =
        rule.subjects.is_empty() || rule.subjects.iter().any(|p| wildcard_match(p, &s.sub));
    issuer_ok && subject_ok
}

/// Whether an accepted external JWT matches a `federated` entry.
fn federated_match(m: &FederatedMatch, v: &Verified) -> bool {
    m.issuer == v.trusted_issuer
        && wildcard_match(&m.subject, &v.sub)
        && m.audience.as_ref().is_none_or(|a| v.aud.contains(a))
        && m.claims
            .iter()
            .all(|(k, want)| v.claims.get(k).and_then(Value::as_str) == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(sub: &str, aud: &[&str], claims: Value) -> Verified {
        Verified {
            trusted_issuer: "team/idp".into(),
            iss: "https://idp".into(),
            sub: sub.into(),
            aud: aud.iter().map(|a| (*a).to_owned()).collect(),
            exp: 0,
            iat: None,
            jti: None,
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn federated_entries_match_issuer_subject_audience_and_claims() {
        let m = FederatedMatch {
            issuer: "team/idp".into(),
            subject: "repo:org/*:ref:refs/heads/main".into(),
            audience: Some("s2s".into()),
            claims: vec![("environment".into(), "prod".into())],
        };
        let ok = json!({"environment": "prod"});
        assert!(federated_match(
            &m,
            &verified("repo:org/app:ref:refs/heads/main", &["s2s"], ok.clone())
        ));
        // Each condition alone fails the match.
        assert!(!federated_match(
            &m,
            &verified("repo:org/app:ref:refs/heads/dev", &["s2s"], ok.clone())
        ));
        assert!(!federated_match(
            &m,
            &verified("repo:org/app:ref:refs/heads/main", &["other"], ok.clone())
        ));
        assert!(!federated_match(
            &m,
            &verified(
                "repo:org/app:ref:refs/heads/main",
                &["s2s"],
                json!({"environment": "dev"})
            )
        ));
        assert!(!federated_match(
            &m,
            &verified(
                "repo:org/app:ref:refs/heads/main",
                &["s2s"],
                json!({"environment": 1})
            )
        ));
        assert!(!federated_match(
            &m,
            &verified("repo:org/app:ref:refs/heads/main", &["s2s"], json!({}))
        ));
        let mut other_issuer = verified("repo:org/app:ref:refs/heads/main", &["s2s"], ok);
        other_issuer.trusted_issuer = "elsewhere/idp".into();
        assert!(!federated_match(&m, &other_issuer));
    }

    #[test]
    fn delegation_rules_cover_issuers_and_subjects() {
        let grant = |rule: Option<DelegationRuleT>| Grant {
            namespace: "n".into(),
            name: "g".into(),
            uid: String::new(),
            audience: "a".into(),
            scopes: vec![],
            tenant: None,
            delegation: rule,
        };
        let subject = |sub: &str, issuer: Option<&str>| Subject {
            sub: sub.into(),
            issuer: issuer.map(str::to_owned),
            exp: 0,
            act: None,
            may_act: None,
        };
        assert!(
            !delegation_allows(&grant(None), &subject("u", None)),
            "no delegation, no exchange"
        );
        let any_of_ours = grant(Some(DelegationRuleT::default()));
        assert!(delegation_allows(&any_of_ours, &subject("anyone", None)));
        assert!(!delegation_allows(
            &any_of_ours,
            &subject("anyone", Some("team/idp"))
        ));
        let users = grant(Some(DelegationRuleT {
            issuers: vec!["team/idp".into()],
            subjects: vec!["user:*".into()],
        }));
        assert!(delegation_allows(
            &users,
            &subject("user:alice", Some("team/idp"))
        ));
        assert!(!delegation_allows(
            &users,
            &subject("svc:x", Some("team/idp"))
        ));
        assert!(!delegation_allows(
            &users,
            &subject("user:alice", Some("other/idp"))
        ));
    }

    use super::super::registry::DelegationRule as DelegationRuleT;
}
