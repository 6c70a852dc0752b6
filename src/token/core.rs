//! The issuing core: authenticate the client, authorize the request, mint an RFC 9068 JWT;
//! and verify our own tokens for introspection and revocation.
//!
//! It reads an immutable [`Registry`] and [`KeySet`] through `ArcSwap`, so readers never
//! lock and a reload swaps both in whole. Time comes from an injected [`Clock`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::audience::{Audience, MAX_AUDIENCES};
use super::deny::DenyList;
use super::error::{ErrorCode, OAuthError};
use super::registry::{self, Client, Grant, Registry};
use super::request::{ClientAuth, Params};
use super::scopes;
use crate::crypto::{self, Jwk, SigningKey};
use crate::trusted_issuer::verify::Issuers;

/// `grant_type` of the client credentials grant.
pub const CLIENT_CREDENTIALS: &str = "client_credentials";
/// `grant_type` of the JWT-bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// `grant_type` of token exchange (RFC 8693).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// What to put in a new access token.
pub(super) struct Mint {
    pub(super) sub: String,
    pub(super) client_id: String,
    pub(super) lifetime: Duration,
    pub(super) audience: Audience,
    pub(super) scope: Vec<String>,
    pub(super) tenant: Option<String>,
    pub(super) act: Option<Value>,
    /// The `grants` claim: every TokenGrant that contributed (see [`registry::grant_refs`]).
    pub(super) grants: Vec<String>,
}
/// Longest accepted client assertion, in bytes.
pub const MAX_ASSERTION_LEN: usize = 8 * 1024;
/// Longest token accepted for introspection or revocation, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Where the current time comes from.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub(super) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Settings of the authorization server.
#[derive(Clone, Debug)]
pub struct Config {
    /// The issuer URL (`iss`), without a trailing slash.
    pub issuer: String,
    /// Upper bound on every token's lifetime.
    pub max_token_lifetime: Duration,
    /// Longest a client assertion may still be valid when presented (RFC 7523 §3: short).
    pub max_assertion_lifetime: Duration,
    /// Tolerance for `exp`, `nbf` and `iat` of assertions.
    pub clock_skew: Duration,
    /// Most tenants one token request may name (one token each).
    pub max_tenants_per_request: usize,
}

impl Config {
    /// Defaults for an issuer URL: 24h maximum lifetime, 5 minute assertions, 60s skew.
    pub fn new(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into().trim_end_matches('/').to_owned(),
            max_token_lifetime: Duration::from_secs(24 * 3600),
            max_assertion_lifetime: Duration::from_secs(300),
            clock_skew: Duration::from_secs(60),
            max_tenants_per_request: 5,
        }
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer)
    }
}

/// The signing key and every public key that may still verify a live token.
pub struct KeySet {
    signer: Arc<SigningKey>,
    verifiers: HashMap<String, (DecodingKey, Algorithm)>,
    jwks: Arc<Vec<u8>>,
}

impl KeySet {
    /// A key set that signs with `signer` and publishes `published` (which should include
    /// the signer's public key; it is added if missing).
    pub fn new(signer: SigningKey, published: Vec<Jwk>) -> Result<Self, crypto::CryptoError> {
        let mut keys = published;
        if !keys.iter().any(|k| k.kid.as_deref() == Some(signer.kid())) {
            keys.push(signer.public_jwk());
        }
        let mut verifiers = HashMap::new();
        for k in &keys {
            if let Some(kid) = &k.kid {
                verifiers.insert(kid.clone(), crypto::decoding_key(k)?);
            }
        }
        let jwks = serde_json::to_vec(&json!({ "keys": keys })).expect("JWKS serializes");
        Ok(Self {
            signer: Arc::new(signer),
            verifiers,
            jwks: Arc::new(jwks),
        })
    }

    /// The JWKS document, serialized once.
    pub fn jwks_json(&self) -> Arc<Vec<u8>> {
        self.jwks.clone()
    }

    /// The current signing key.
    pub fn signer(&self) -> &SigningKey {
        &self.signer
    }
}

/// `jti`s with their expiry: assertions already used, tokens revoked.
#[derive(Default)]
pub(super) struct JtiSet {
    entries: Mutex<HashMap<String, u64>>,
}

impl JtiSet {
    /// Inserts; false if it was there and not yet expired.
    pub(super) fn insert(&self, jti: &str, exp: u64, now: u64) -> bool {
        let mut m = self.entries.lock().expect("jti set lock");
        if m.len() > 10_000 {
            m.retain(|_, e| *e >= now);
        }
        match m.get(jti) {
            Some(e) if *e >= now => false,
            _ => {
                m.insert(jti.to_owned(), exp);
                true
            }
        }
    }

    pub(super) fn contains(&self, jti: &str, now: u64) -> bool {
        self.entries
            .lock()
            .expect("jti set lock")
            .get(jti)
            .is_some_and(|e| *e >= now)
    }
}

/// The successful token response (RFC 6749 §5.1).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `exp`.
    pub expires_in: u64,
    /// Granted scopes, space-separated; absent when none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// RFC 8693 §2.2.1: the type of the issued token, on token exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
    /// The claims signed into `access_token`, for the audit trail (never serialized).
    #[serde(skip)]
    pub claims: Option<Box<AccessClaims>>,
}

/// The claims of our access tokens (RFC 9068 §2.2).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// Subject: the client id for client credentials.
    pub sub: String,
    /// Audience: a string for one, a list for several (RFC 7519 §4.1.3).
    pub aud: Audience,
    /// Expiry.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Token id.
    pub jti: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// Space-separated scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Tenant of the grant, if it stands for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// RFC 8693 §4.1: who acts on the subject's behalf; prior actors nested inside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    /// Private claim: the TokenGrants the token was issued under, each
    /// `namespace/name/uid`. The token is void once any of them is deleted or revoked.
    /// Absent on tokens from earlier versions (only the deny list applies to those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<String>,
}

/// The claims we require of a `private_key_jwt` client assertion.
#[derive(Deserialize)]
struct AssertionClaims {
    exp: u64,
    jti: Option<String>,
}

/// The token server's brain.
pub struct Core {
    pub(super) config: Config,
    pub(super) registry: ArcSwap<Registry>,
    pub(super) keys: ArcSwap<KeySet>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) used_assertions: JtiSet,
    pub(super) revoked: JtiSet,
    /// Keys of the trusted issuers.
    pub(super) issuers: ArcSwap<Issuers>,
    /// The shared deny list (from the API in a cluster).
    pub(super) deny: ArcSwap<DenyList>,
    /// Called with a TrustedIssuer (`namespace/name`) when a JWT names a `kid` it does not
    /// know, so its keys are fetched again (rate-limited by the callee).
    pub(super) unknown_kid: Mutex<Option<UnknownKidHook>>,
}

/// See [`Core::set_unknown_kid_hook`].
pub type UnknownKidHook = Arc<dyn Fn(&str) + Send + Sync>;

impl Core {
    /// A core with a registry and keys.
    pub fn new(config: Config, registry: Registry, keys: KeySet, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            registry: ArcSwap::from_pointee(registry),
            keys: ArcSwap::from_pointee(keys),
            clock,
            used_assertions: JtiSet::default(),
            revoked: JtiSet::default(),
            issuers: ArcSwap::from_pointee(Issuers::default()),
            deny: ArcSwap::from_pointee(DenyList::default()),
            unknown_kid: Mutex::new(None),
        }
    }

    /// Replaces the trusted issuers and their keys.
    pub fn set_issuers(&self, issuers: Issuers) {
        self.issuers.store(Arc::new(issuers));
    }

    /// Replaces the shared deny list (after its ConfigMap changed).
    pub fn set_deny_list(&self, deny: DenyList) {
        self.deny.store(Arc::new(deny));
    }

    /// Whether one of our tokens has been revoked: here, on the shared list, or by its
    /// grant going away (deleted or `spec.revoked`: the registry holds neither). Grant ids
    /// are what let deletion revoke without a finalizer: nothing has to run when a grant (or
    /// its namespace) is deleted, so deletion never waits on the controller.
    pub(super) fn is_void(&self, c: &AccessClaims, now: u64) -> bool {
        self.revoked.contains(&c.jti, now)
            || {
                let deny = self.deny.load();
                c.aud
                    .iter()
                    .any(|aud| deny.denies(&c.jti, &c.sub, aud, c.iat, now))
            }
            || self.grants_gone(&self.registry.load(), c)
    }

    /// Whether a token names a grant that is no longer in force. A malformed entry counts as
    /// gone: we signed it, so it can only come from a bug, and refusing is the safe side.
    fn grants_gone(&self, registry: &Registry, c: &AccessClaims) -> bool {
        c.grants
            .iter()
            .any(|entry| registry::grant_ref_uid(entry).is_none_or(|uid| !registry.grant_live(uid)))
    }

    /// The trusted issuers in force.
    pub fn issuers(&self) -> Arc<Issuers> {
        self.issuers.load_full()
    }

    /// Sets what is called when an external JWT names an unknown `kid`.
    pub fn set_unknown_kid_hook(&self, hook: UnknownKidHook) {
        *self.unknown_kid.lock().expect("not poisoned") = Some(hook);
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the registry (after a resource changed).
    pub fn set_registry(&self, registry: Registry) {
        self.registry.store(Arc::new(registry));
    }

    /// Replaces the keys (after a signing-key rotation).
    pub fn set_keys(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// The JWKS document.
    pub fn jwks_json(&self) -> Arc<Vec<u8>> {
        self.keys.load().jwks_json()
    }

    /// RFC 8414 / OpenID discovery metadata.
    pub fn metadata(&self) -> Value {
        let iss = &self.config.issuer;
        let alg = self.keys.load().signer().algorithm().jws_name();
        let auth_methods = [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ];
        let assertion_algs = ["ES256", "EdDSA", "RS256"];
        json!({
            "issuer": iss,
            "token_endpoint": format!("{iss}/oauth2/token"),
            "jwks_uri": format!("{iss}/jwks.json"),
            "introspection_endpoint": format!("{iss}/oauth2/introspect"),
            "revocation_endpoint": format!("{iss}/oauth2/revoke"),
            "grant_types_supported": [CLIENT_CREDENTIALS, JWT_BEARER, TOKEN_EXCHANGE],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": auth_methods,
            "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
            "introspection_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [alg],
            "access_token_signing_alg_values_supported": [alg],
        })
    }

    /// `POST /oauth2/token`.
    pub fn token(&self, auth: &ClientAuth, params: &Params) -> Result<TokenResponse, OAuthError> {
        let grant_type = params
            .get("grant_type")
            .ok_or_else(|| OAuthError::invalid_request("grant_type is required"))?;
        match grant_type {
            CLIENT_CREDENTIALS => {}
            JWT_BEARER => return self.jwt_bearer(auth, params),
            TOKEN_EXCHANGE => return self.token_exchange(auth, params),
            // Refused before touching credentials: cheap for garbage requests.
            _ => {
                return Err(OAuthError::new(
                    ErrorCode::UnsupportedGrantType,
                    format!("grant_type {grant_type} is not supported"),
                ));
            }
        }
        let registry = self.registry.load();
        let client = self.authenticate(&registry, auth)?;
        if let [tenant] = params.all("tenant") {
            return self.tenant_token(&registry, &client, tenant, params);
        }
        if params.all("tenant").len() > 1 {
            return Err(OAuthError::invalid_request(
                "several tenants: ask the multi-tenant form (one token per tenant)",
            ));
        }
        let audience = self.audiences(&client, params)?;
        let granted = authorize_client(&registry, &client, &audience, &params.scopes())?;
        self.mint(Mint {
            sub: client.client_id.clone(),
            client_id: client.client_id.clone(),
            lifetime: client.token_lifetime,
            audience,
            scope: granted.scope,
            tenant: granted.tenant,
            act: None,
            grants: granted.grants,
        })
    }

    pub(super) fn mint(&self, m: Mint) -> Result<TokenResponse, OAuthError> {
        let now = unix(self.clock.now());
        let lifetime = m.lifetime.min(self.config.max_token_lifetime).as_secs();
        let scope = (!m.scope.is_empty()).then(|| m.scope.join(" "));
        let claims = AccessClaims {
            iss: self.config.issuer.clone(),
            sub: m.sub,
            aud: m.audience,
            exp: now + lifetime,
            iat: now,
            nbf: now,
            jti: crypto::random_token_id(),
            client_id: m.client_id,
            scope: scope.clone(),
            tenant: m.tenant,
            act: m.act,
            grants: m.grants,
        };
        let keys = self.keys.load();
        let access_token = crypto::sign_jwt(keys.signer(), "at+jwt", &claims).map_err(|e| {
            tracing::error!(error = %e, "signing failed");
            OAuthError::invalid_request("the token could not be signed")
        })?;
        Ok(TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: lifetime,
            scope,
            issued_token_type: None,
            claims: Some(Box::new(claims)),
        })
    }

    /// The audiences of a request: every `audience` and `resource` (RFC 8707), in order and
    /// without repeats, or the account's only audience. Each must be among the account's.
    pub(super) fn audiences(
        &self,
        client: &Client,
        params: &Params,
    ) -> Result<Audience, OAuthError> {
        let audience = match requested_audiences(params)? {
            Some(asked) => asked,
            None => match client.audiences.as_slice() {
                [only] => Audience::one(only.clone()),
                _ => {
                    return Err(OAuthError::invalid_target(
                        "name the audience (audience or resource parameter)",
                    ));
                }
            },
        };
        if let Some(other) = audience
            .iter()
            .find(|a| !client.audiences.iter().any(|c| c == a))
        {
            return Err(OAuthError::invalid_target(format!(
                "audience {other} is not among the account's audiences"
            )));
        }
        Ok(audience)
    }

    /// Authenticates a client by any of the supported methods.
    pub(super) fn authenticate(
        &self,
        registry: &Registry,
        auth: &ClientAuth,
    ) -> Result<Arc<Client>, OAuthError> {
        let now = self.clock.now();
        let client = match auth {
            ClientAuth::None => {
                return Err(OAuthError::invalid_client());
            }
            ClientAuth::Secret {
                client_id, secret, ..
            } => {
                let client = registry.client(client_id);
                let ok = client.is_some_and(|c| {
                    c.secrets.iter().any(|v| {
                        v.not_after.is_none_or(|t| t > now)
                            && crypto::verify_secret(secret, &v.digest)
                    })
                });
                if !ok {
                    if client.is_none() {
                        // Same work for unknown clients, so timing tells nothing.
                        crypto::verify_secret(secret, UNKNOWN_CLIENT_DIGEST);
                    }
                    return Err(OAuthError::invalid_client());
                }
                client.cloned().expect("checked above")
            }
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => self.verify_client_assertion(registry, client_id.as_deref(), assertion)?,
        };
        if client.disabled {
            return Err(OAuthError::invalid_client());
        }
        Ok(client)
    }

    /// RFC 7523 §2.2 / §3: a JWT signed with one of the client's keys, `iss` = `sub` = the
    /// client id, `aud` the token endpoint or the issuer, short-lived, with a `jti` never seen
    /// before.
    fn verify_client_assertion(
        &self,
        registry: &Registry,
        client_id: Option<&str>,
        assertion: &str,
    ) -> Result<Arc<Client>, OAuthError> {
        if assertion.len() > MAX_ASSERTION_LEN {
            return Err(OAuthError::invalid_client());
        }
        let header =
            jsonwebtoken::decode_header(assertion).map_err(|_| OAuthError::invalid_client())?;
        #[derive(Deserialize)]
        struct Iss {
            iss: String,
        }
        // Routing only; nothing is trusted before the signature checks out.
        let Ok(Iss { iss }) = jsonwebtoken::dangerous::insecure_decode_claims::<Iss>(assertion)
        else {
            return Err(OAuthError::invalid_client());
        };
        let id = client_id.unwrap_or(&iss).to_owned();
        // private_key_jwt: issued by the client itself, with one of its keys. Anything else is
        // a JWT from a trusted issuer presented by a federated account.
        let Some(client) = registry
            .client(&id)
            .filter(|c| !c.keys.is_empty() && iss == id)
        else {
            return self.verify_federated(registry, client_id, assertion);
        };
        if !matches!(
            header.alg,
            Algorithm::ES256 | Algorithm::EdDSA | Algorithm::RS256
        ) {
            return Err(OAuthError::invalid_client());
        }
        let now = self.clock.now();
        let key = client
            .keys
            .iter()
            .filter(|k| k.not_after.is_none_or(|t| t > now) && k.algorithm == header.alg)
            .find(|k| header.kid.as_deref().is_none_or(|kid| kid == k.kid))
            .ok_or_else(OAuthError::invalid_client)?;
        let mut v = Validation::new(key.algorithm);
        v.leeway = self.config.clock_skew.as_secs();
        v.validate_nbf = true;
        v.set_issuer(&[&id]);
        v.sub = Some(id.clone());
        v.set_audience(&[self.config.token_endpoint(), self.config.issuer.clone()]);
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(assertion, &key.key, &v)
            .map_err(|_| OAuthError::invalid_client())?;
        let now_s = unix(now);
        let longest = self.config.max_assertion_lifetime + self.config.clock_skew;
        if data.claims.exp > now_s + longest.as_secs() {
            return Err(OAuthError::invalid_client());
        }
        let jti = data
            .claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(OAuthError::invalid_client)?;
        // Remember the jti for as long as the assertion could be accepted.
        let replay_key = format!("{id}\u{0}{jti}");
        if !self.used_assertions.insert(
            &replay_key,
            data.claims.exp + self.config.clock_skew.as_secs(),
            now_s,
        ) {
            return Err(OAuthError::invalid_client());
        }
        Ok(client.clone())
    }

    /// Verifies one of our own access tokens: signature by a published key, exact issuer, not
    /// expired. Audience is not checked here: introspection reports it.
    pub(super) fn verify_own(&self, token: &str) -> Option<AccessClaims> {
        if token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let keys = self.keys.load();
        let (key, alg) = keys.verifiers.get(header.kid.as_deref()?)?;
        if header.alg != *alg {
            return None;
        }
        let mut v = Validation::new(*alg);
        v.leeway = 0;
        v.validate_aud = false;
        v.set_issuer(&[&self.config.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        jsonwebtoken::decode::<AccessClaims>(token, key, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// `POST /oauth2/introspect` (RFC 7662). The caller authenticates as a client; it learns
    /// about tokens issued to it, or for an audience its account claims. Anything else is
    /// `{"active": false}`.
    pub fn introspect(&self, auth: &ClientAuth, params: &Params) -> Result<Value, OAuthError> {
        let registry = self.registry.load();
        let caller = self.authenticate(&registry, auth)?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        let now = unix(self.clock.now());
        let inactive = json!({ "active": false });
        let Some(claims) = self.verify_own(token) else {
            return Ok(inactive);
        };
        if self.is_void(&claims, now) {
            return Ok(inactive);
        }
        let may_see = claims.client_id == caller.client_id
            || claims
                .aud
                .iter()
                .any(|a| registry.owns_audience(&caller, a));
        if !may_see {
            return Ok(inactive);
        }
        let mut out = serde_json::to_value(&claims).expect("claims serialize");
        out["active"] = Value::Bool(true);
        out["token_type"] = Value::String("Bearer".into());
        Ok(out)
    }

    /// `POST /oauth2/revoke` (RFC 7009). A client may revoke tokens issued to it; anything
    /// else (unknown, expired, someone else's) is silently accepted, as §2.2 asks. Returns the
    /// revoked token's id and expiry, for the caller to put on the shared deny list; this
    /// replica stops accepting it at once.
    pub fn revoke(
        &self,
        auth: &ClientAuth,
        params: &Params,
    ) -> Result<Option<(String, u64)>, OAuthError> {
        let registry = self.registry.load();
        let caller = self.authenticate(&registry, auth)?;
        let token = params
            .get("token")
            .ok_or_else(|| OAuthError::invalid_request("token is required"))?;
        if let Some(hint) = params.get("token_type_hint")
            && hint != "access_token"
            && hint != "refresh_token"
        {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedTokenType,
                "only access tokens exist here",
            ));
        }
        if let Some(claims) = self.verify_own(token)
            && claims.client_id == caller.client_id
        {
            self.revoked
                .insert(&claims.jti, claims.exp, unix(self.clock.now()));
            tracing::info!(client_id = %caller.client_id, jti = %claims.jti, "token revoked");
            return Ok(Some((claims.jti, claims.exp)));
        }
        Ok(None)
    }
}

/// The audiences a request names (`audience` and `resource`, RFC 8707), if any.
pub(super) fn requested_audiences(params: &Params) -> Result<Option<Audience>, OAuthError> {
    let asked = params.all("audience").iter().chain(params.all("resource"));
    let Some(audience) = Audience::many(asked.map(String::as_str)) else {
        return Ok(None);
    };
    if audience.as_slice().len() > MAX_AUDIENCES {
        return Err(OAuthError::invalid_target(format!(
            "at most {MAX_AUDIENCES} audiences per token"
        )));
    }
    Ok(Some(audience))
}

/// Every audience must be among the account's `spec.audiences`.
fn among_account_audiences(client: &Client, audience: &Audience) -> Result<(), OAuthError> {
    match audience
        .iter()
        .find(|a| !client.audiences.iter().any(|c| c == a))
    {
        Some(other) => Err(OAuthError::invalid_target(format!(
            "audience {other} is not among the account's audiences"
        ))),
        None => Ok(()),
    }
}

/// What a client-credentials token for `client` may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The scopes.
    pub scope: Vec<String>,
    /// The tenant the grants stand for.
    pub tenant: Option<String>,
    /// The `grants` claim: every contributing TokenGrant.
    pub grants: Vec<String>,
}

/// Authorizes a client-credentials token for an authenticated `client`: the audiences must be
/// the account's, each granted, the scopes allowed at every one. The token endpoint and the
/// AccessToken controller both decide with this, so a materialized token never carries more
/// than the endpoint would hand out.
pub fn authorize_client(
    registry: &Registry,
    client: &Client,
    audience: &Audience,
    requested: &[&str],
) -> Result<Authorization, OAuthError> {
    among_account_audiences(client, audience)?;
    let granted = authorize(registry, audience, &client.scopes, requested, |aud| {
        registry.grants_for(client, aud)
    })
    .map_err(|e| {
        e.unwrap_or_else(|aud| {
            OAuthError::invalid_target(format!(
                "no TokenGrant lets this client get tokens for {aud}"
            ))
        })
    })?;
    Ok(Authorization {
        scope: granted.scope,
        tenant: granted.tenant,
        grants: registry::grant_refs(granted.grants),
    })
}

/// What a request may get across all its audiences.
pub(super) struct Authorized<'r> {
    /// Every grant that contributed, for the `grants` claim.
    pub(super) grants: Vec<&'r Grant>,
    /// The scopes: those asked for, each allowed at every audience; with none asked, those
    /// every audience allows.
    pub(super) scope: Vec<String>,
    /// The tenant the grants stand for (they must agree).
    pub(super) tenant: Option<String>,
}

/// Authorizes a token for every audience of `audience`: each needs a grant (`grants_of`),
/// and the scopes are requested ∩ `ceiling` ∩ granted ∩ defined at each audience. A token
/// for several audiences carries only what all of them allow, so it is never more than a
/// single-audience token for any one of them. `Err(Err(audience))` names the first audience
/// without a grant (the caller words the error); `Err(Ok(e))` is the error itself.
pub(super) fn authorize<'r>(
    registry: &'r Registry,
    audience: &Audience,
    ceiling: &[String],
    requested: &[&str],
    grants_of: impl Fn(&str) -> Vec<&'r Grant>,
) -> Result<Authorized<'r>, Result<OAuthError, String>> {
    let several = audience.as_slice().len() > 1;
    let mut out = Authorized {
        grants: Vec::new(),
        scope: Vec::new(),
        tenant: None,
    };
    for (i, aud) in audience.iter().enumerate() {
        let grants = grants_of(aud);
        if grants.is_empty() {
            return Err(Err(aud.to_owned()));
        }
        let granted: Vec<String> = grants
            .iter()
            .flat_map(|g| g.scopes.iter().cloned())
            .collect();
        let defined = registry
            .api(aud)
            .map(|a| a.scopes.as_slice())
            .unwrap_or_default();
        let scope = scopes::resolve(requested, ceiling, &granted, defined).map_err(|s| {
            let at = if several {
                format!(" for {aud}")
            } else {
                String::new()
            };
            Ok(OAuthError::new(
                ErrorCode::InvalidScope,
                format!("scope {s} is not granted{at}"),
            ))
        })?;
        let tenant = grants.iter().find_map(|g| g.tenant.clone());
        if i == 0 {
            out.scope = scope;
            out.tenant = tenant;
        } else {
            out.scope.retain(|s| scope.contains(s));
            if tenant != out.tenant {
                return Err(Ok(OAuthError::invalid_target(
                    "these audiences are granted for different tenants: ask for them separately",
                )));
            }
        }
        out.grants.extend(grants);
    }
    Ok(out)
}

/// A digest no secret has (the SHA-256 of the empty string is not one of ours: secrets are
/// 43 characters), compared against for unknown clients.
const UNKNOWN_CLIENT_DIGEST: &str = "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::crypto::KeyAlgorithm;
    use crate::token::deny::GrantRevocation;
    use crate::token::registry::{Api, Grant, SecretVerifier};

    const AUDIENCE: &str = "https://orders.test";

    fn grant(name: &str, uid: &str) -> Grant {
        Grant {
            namespace: "shop".into(),
            name: name.into(),
            uid: uid.into(),
            audience: AUDIENCE.into(),
            scopes: vec!["orders:read".into()],
            tenant: None,
            delegation: None,
        }
    }

    /// A registry with one API in `shop`, the client `c1` (account `team/worker`) and these
    /// grants for it.
    fn registry(secret: &str, grants: &[Grant]) -> Registry {
        let mut r = Registry::new(false);
        r.add_api(Api {
            audience: AUDIENCE.into(),
            namespace: "shop".into(),
            owner: "orders".into(),
            scopes: vec![],
        });
        r.add_client(Client {
            client_id: "c1".into(),
            namespace: "team".into(),
            name: "worker".into(),
            scopes: vec!["orders:read".into()],
            audiences: vec![AUDIENCE.into()],
            token_lifetime: Duration::from_secs(600),
            disabled: false,
            secrets: vec![SecretVerifier {
                digest: crypto::secret_digest(secret),
                not_after: None,
            }],
            keys: vec![],
            federated: vec![],
        });
        for g in grants {
            r.add_grant("team", "worker", g.clone());
        }
        r
    }

    fn core(registry: Registry) -> Core {
        let key = crypto::generate_key(KeyAlgorithm::ES256).unwrap();
        let signer = SigningKey::from_pem(KeyAlgorithm::ES256, key.kid, &key.private_pem).unwrap();
        Core::new(
            Config::new("https://s2s.test"),
            registry,
            KeySet::new(signer, vec![]).unwrap(),
            Arc::new(SystemClock),
        )
    }

    fn auth(secret: &str) -> ClientAuth {
        ClientAuth::Secret {
            client_id: "c1".into(),
            secret: secret.into(),
            basic: true,
        }
    }

    /// A client-credentials token from the core, and its verified claims.
    fn issue(core: &Core, secret: &str) -> (String, AccessClaims) {
        let params = Params::parse(b"grant_type=client_credentials").unwrap();
        let token = core.token(&auth(secret), &params).unwrap().access_token;
        let claims = core.verify_own(&token).unwrap();
        (token, claims)
    }

    fn active(core: &Core, secret: &str, token: &str) -> bool {
        let params = Params::parse(format!("token={token}").as_bytes()).unwrap();
        core.introspect(&auth(secret), &params).unwrap()["active"] == Value::Bool(true)
    }

    fn now() -> u64 {
        unix(SystemTime::now())
    }

    #[test]
    fn several_audiences_get_the_scopes_all_allow_and_must_agree_on_the_tenant() {
        const OTHER: &str = "https://stock.test";
        let secret = crypto::random_secret();
        let mut r = registry(&secret, &[]);
        r.add_api(Api {
            audience: OTHER.into(),
            namespace: "warehouse".into(),
            owner: "stock".into(),
            scopes: vec![],
        });
        let mut orders = grant("a", "uid-a");
        orders.scopes = vec!["orders:read".into(), "orders:write".into()];
        let mut stock = grant("s", "uid-s");
        stock.namespace = "warehouse".into();
        stock.audience = OTHER.into();
        let audience = Audience::many([AUDIENCE, OTHER]).unwrap();
        let ceiling = vec!["orders:*".to_owned()];
        let run = |r: &Registry, requested: &[&str], grants: [&Grant; 2]| {
            authorize(r, &audience, &ceiling, requested, |aud| {
                grants.into_iter().filter(|g| g.audience == aud).collect()
            })
            .map(|a| (a.scope, a.tenant, a.grants.len()))
            .map_err(|e| e.map(|e| e.code))
        };
        assert_eq!(
            run(&r, &[], [&orders, &stock]),
            Ok((vec!["orders:read".into()], None, 2))
        );
        assert_eq!(
            run(&r, &["orders:write"], [&orders, &stock]),
            Err(Ok(ErrorCode::InvalidScope))
        );
        stock.tenant = Some("acme".into());
        assert_eq!(
            run(&r, &[], [&orders, &stock]),
            Err(Ok(ErrorCode::InvalidTarget))
        );
        orders.tenant = Some("acme".into());
        assert_eq!(
            run(&r, &["orders:read"], [&orders, &stock]),
            Ok((vec!["orders:read".into()], Some("acme".into()), 2))
        );
        stock.audience = "https://elsewhere".into();
        assert_eq!(run(&r, &[], [&orders, &stock]), Err(Err(OTHER.to_owned())));
    }

    #[test]
    fn tokens_name_every_grant_that_contributed() {
        let secret = crypto::random_secret();
        let core = core(registry(
            &secret,
            &[grant("b", "uid-b"), grant("a", "uid-a")],
        ));
        let (_, claims) = issue(&core, &secret);
        assert_eq!(claims.grants, ["shop/a/uid-a", "shop/b/uid-b"]);
    }

    #[test]
    fn a_token_of_a_live_grant_is_not_void() {
        let secret = crypto::random_secret();
        let core = core(registry(&secret, &[grant("a", "uid-a")]));
        let (token, claims) = issue(&core, &secret);
        assert!(!core.is_void(&claims, now()));
        assert!(active(&core, &secret, &token));
    }

    #[test]
    fn a_token_of_a_deleted_grant_is_void() {
        let secret = crypto::random_secret();
        let other = grant("b", "uid-b");
        let core = core(registry(&secret, &[grant("a", "uid-a"), other.clone()]));
        let (token, claims) = issue(&core, &secret);
        // `a` is deleted: the token named it, so it is void though `b` still stands.
        core.set_registry(registry(&secret, std::slice::from_ref(&other)));
        assert!(core.is_void(&claims, now()));
        assert!(!active(&core, &secret, &token));
        // A grant of the same name created again is another grant (another uid).
        core.set_registry(registry(&secret, &[grant("a", "uid-a2"), other]));
        assert!(core.is_void(&claims, now()));
        let (_, fresh) = issue(&core, &secret);
        assert!(!core.is_void(&fresh, now()));
    }

    #[test]
    fn a_token_of_a_revoked_grant_is_void() {
        let secret = crypto::random_secret();
        let core = core(registry(&secret, &[grant("a", "uid-a")]));
        let (token, claims) = issue(&core, &secret);
        // `spec.revoked` leaves the grant out of the registry (crate::store), with no
        // deny-list entry yet: the claim alone voids the token.
        core.set_registry(registry(&secret, &[]));
        assert!(core.is_void(&claims, now()));
        assert!(!active(&core, &secret, &token));
        // Un-revoked (same uid back): the claim no longer voids it; the deny-list entry the
        // revocation wrote is what keeps it void.
        core.set_registry(registry(&secret, &[grant("a", "uid-a")]));
        assert!(!core.is_void(&claims, now()));
        let mut deny = BTreeMap::new();
        let entry = GrantRevocation {
            sub: claims.sub.clone(),
            audience: claims.aud.first().to_owned(),
            before: claims.iat,
            until: claims.exp + 60,
        };
        deny.insert(
            crate::token::deny::grant_key(&entry.sub, &entry.audience),
            serde_json::to_string(&entry).unwrap(),
        );
        core.set_deny_list(DenyList::from_data(&deny));
        assert!(core.is_void(&claims, now()));
    }

    #[test]
    fn a_token_without_the_claim_falls_back_to_the_deny_list() {
        let secret = crypto::random_secret();
        let core = core(registry(&secret, &[grant("a", "uid-a")]));
        let (_, mut claims) = issue(&core, &secret);
        // As tokens from earlier versions: no `grants`.
        claims.grants.clear();
        core.set_registry(registry(&secret, &[]));
        assert!(!core.is_void(&claims, now()), "no claim, no grant check");
        let mut deny = BTreeMap::new();
        deny.insert(format!("j.{}", claims.jti), claims.exp.to_string());
        core.set_deny_list(DenyList::from_data(&deny));
        assert!(core.is_void(&claims, now()));
    }

    #[test]
    fn a_malformed_grants_entry_is_void() {
        let secret = crypto::random_secret();
        let core = core(registry(&secret, &[grant("a", "uid-a")]));
        let (_, mut claims) = issue(&core, &secret);
        claims.grants = vec!["uid-a".into()];
        assert!(core.is_void(&claims, now()));
        claims.grants = vec!["shop/a/".into()];
        assert!(core.is_void(&claims, now()));
    }
}
