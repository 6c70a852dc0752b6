//! The bodies of the fuzz targets, one `pub fn(&[u8])` each, shared by the libFuzzer binaries
//! in `fuzz/fuzz_targets/` (nightly, `cargo fuzz run <target>`) and by `tests/fuzz_corpus.rs`,
//! which runs every seed of `fuzz/corpus/<target>/` and deterministic mutations of them on
//! stable. A body returns normally for any input: a panic is the bug.
//!
//! Every target takes input from outside the process: token requests (form body and
//! `Authorization` header), JWTs (client assertions, subject tokens, JWT-bearer assertions,
//! tokens to introspect), JWK Sets and discovery documents fetched from identity providers, and
//! the manifests `dev` reads. The token core runs against a small fixed world (accounts, grants,
//! a trusted issuer, keys from `keys/`, a clock stopped at [`NOW`]) so that seeds signed with
//! those keys stay valid and take the fuzzer past signature checks.
//!
//! The keys under `keys/` exist only for fuzzing; nothing else trusts them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use s2s_operator::access_token;
use s2s_operator::api::trusted_issuer::JwsAlgorithm;
use s2s_operator::crypto::{self, CryptoError, GeneratedKey, Jwk, KeyAlgorithm, SigningKey};
use s2s_operator::service_account::{self, Generator, Observed};
use s2s_operator::token::registry::{DelegationRule, FederatedMatch};
use s2s_operator::token::{
    Api, Client, ClientAuth, ClientKey, Clock, Config, Core, Grant, KeySet, Params, Registry,
    SecretVerifier,
};
use s2s_operator::trusted_issuer::fetch::{kubernetes_jwks_path, parse_discovery, parse_jwks};
use s2s_operator::trusted_issuer::resolve::{resolve, url_allowed};
use s2s_operator::trusted_issuer::verify::{IssuerConfig, IssuerKeys, Issuers};

/// A target's body.
pub type Target = fn(&[u8]);

/// The names of the targets, as in `fuzz/Cargo.toml` and `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("token_request", token_request),
    ("jwt", jwt),
    ("jwks", jwks),
    ("discovery", discovery),
    ("manifests", manifests),
];

/// The fixed time of the fixed world, Unix seconds.
pub const NOW: u64 = 1_800_000_000;
/// Our issuer.
pub const ISSUER: &str = "https://s2s.fuzz";
/// The API every account may call.
pub const API: &str = "https://api.fuzz";
/// A tenant's API.
pub const TENANT_API: &str = "https://tenant.fuzz/t1";
/// The trusted identity provider's `iss`.
pub const IDP: &str = "https://idp.fuzz";
/// Its TrustedIssuer, `namespace/name`.
pub const IDP_KEY: &str = "idps/idp";
/// The audience the identity provider's tokens must carry.
pub const IDP_AUDIENCE: &str = "s2s";
/// A `client_secret_*` account and its secret.
pub const SECRET_CLIENT: &str = "fuzz-secret-client";
/// The secret of [`SECRET_CLIENT`].
pub const SECRET: &str = "fuzz-only-secret-not-used-anywhere-else-00";
/// A `private_key_jwt` account (ES256 key `client-es`).
pub const KEY_CLIENT: &str = "fuzz-key-client";
/// A `private_key_jwt` account (EdDSA key `client-ed`).
pub const ED_CLIENT: &str = "fuzz-ed-client";
/// A federated account: the identity provider's `svc:*`.
pub const FED_CLIENT: &str = "fuzz-federated-client";

/// Our signing key (kid `signer`).
pub const SIGNER_PEM: &str = include_str!("keys/signer.pem");
/// [`KEY_CLIENT`]'s private key (kid `client-es`).
pub const CLIENT_PEM: &str = include_str!("keys/client.pem");
/// [`ED_CLIENT`]'s private key (kid `client-ed`).
pub const CLIENT_ED_PEM: &str = include_str!("keys/client-ed.pem");
/// The identity provider's key (kid `idp`).
pub const IDP_PEM: &str = include_str!("keys/idp.pem");

/// A clock stopped at [`NOW`].
pub struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }
}

/// A fixture key.
pub fn signing_key(alg: KeyAlgorithm, kid: &str, pem: &str) -> SigningKey {
    SigningKey::from_pem(alg, kid, pem).expect("fixture key parses")
}

fn client_key(alg: KeyAlgorithm, kid: &str, pem: &str) -> ClientKey {
    let (key, algorithm) =
        crypto::decoding_key(&signing_key(alg, kid, pem).public_jwk()).expect("public key");
    ClientKey {
        kid: kid.to_owned(),
        algorithm,
        key,
        not_after: None,
    }
}

fn client(id: &str, name: &str) -> Client {
    Client {
        client_id: id.to_owned(),
        namespace: "apps".to_owned(),
        name: name.to_owned(),
        scopes: vec!["read".into(), "write:*".into()],
        audiences: vec![API.into(), TENANT_API.into()],
        token_lifetime: Duration::from_secs(600),
        disabled: false,
        secrets: vec![],
        keys: vec![],
        federated: vec![],
    }
}

fn grant(name: &str, namespace: &str, audience: &str) -> Grant {
    Grant {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: format!("uid-{namespace}-{name}"),
        audience: audience.to_owned(),
        scopes: vec!["read".into(), "write:*".into()],
        tenant: None,
        delegation: Some(DelegationRule {
            issuers: vec![IDP_KEY.into()],
            subjects: vec![],
        }),
    }
}

/// The accounts, APIs and grants of the fixed world.
pub fn registry() -> Registry {
    let mut r = Registry::new(false);
    r.add_api(Api {
        audience: API.into(),
        namespace: "api".into(),
        owner: "api".into(),
        scopes: vec!["read".into(), "write:a".into(), "write:b".into()],
    });
    r.add_api(Api {
        audience: TENANT_API.into(),
        namespace: "t1".into(),
        owner: "data".into(),
        scopes: vec![],
    });
    let mut secret = client(SECRET_CLIENT, "secret");
    secret.secrets.push(SecretVerifier {
        digest: crypto::secret_digest(SECRET),
        not_after: None,
    });
    let mut es = client(KEY_CLIENT, "key");
    es.keys
        .push(client_key(KeyAlgorithm::ES256, "client-es", CLIENT_PEM));
    let mut ed = client(ED_CLIENT, "ed");
    ed.keys
        .push(client_key(KeyAlgorithm::EdDSA, "client-ed", CLIENT_ED_PEM));
    let mut fed = client(FED_CLIENT, "federated");
    fed.federated.push(FederatedMatch {
        issuer: IDP_KEY.into(),
        subject: "svc:*".into(),
        audience: None,
        claims: vec![],
    });
    for c in [secret, es, ed, fed] {
        r.add_grant(&c.namespace, &c.name, grant(&c.name, "api", API));
        let mut tenant = grant(&c.name, "t1", TENANT_API);
        tenant.tenant = Some("t1".into());
        r.add_grant(&c.namespace, &c.name, tenant);
        r.add_client(c);
    }
    r.add_issuer_grant(IDP_KEY, "svc:sync", grant("sync", "api", API));
    r
}

/// The trusted identity provider with its one key.
pub fn issuers() -> Issuers {
    let jwk = signing_key(KeyAlgorithm::ES256, "idp", IDP_PEM).public_jwk();
    Issuers::new(vec![(idp_config(), IssuerKeys { keys: vec![jwk] })])
}

/// The identity provider's TrustedIssuer as the verifier sees it.
pub fn idp_config() -> IssuerConfig {
    IssuerConfig {
        key: IDP_KEY.into(),
        issuers: vec![IDP.into()],
        audiences: vec![IDP_AUDIENCE.into()],
        algorithms: vec![
            JwsAlgorithm::ES256,
            JwsAlgorithm::RS256,
            JwsAlgorithm::EdDSA,
        ],
        clock_skew: Duration::from_secs(60),
        required_app: None,
    }
}

/// A token core over the fixed world. A fresh one per input, so that no input depends on an
/// earlier one (used assertions, revocations).
pub fn core() -> Core {
    let mut config = Config::new(ISSUER);
    config.max_token_lifetime = Duration::from_secs(3600);
    let keys = KeySet::new(
        signing_key(KeyAlgorithm::ES256, "signer", SIGNER_PEM),
        vec![],
    )
    .expect("fixture key set");
    let core = Core::new(config, registry(), keys, Arc::new(FixedClock));
    core.set_issuers(issuers());
    core
}

/// `Authorization` value for [`SECRET_CLIENT`].
pub fn basic_header() -> String {
    use base64::Engine;
    let raw = format!("{SECRET_CLIENT}:{SECRET}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn params(pairs: &[(&str, &str)]) -> Params {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Params::parse(body.as_bytes()).expect("fixed form parses")
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Target `token_request`: a token request as the HTTP layer hands it over. The input's first
/// line is the `Authorization` header (an empty line: none), the rest the form body. The body
/// goes through the token, multi-tenant, introspection, revocation and tenant-list paths.
pub fn token_request(data: &[u8]) {
    let (header, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let header = String::from_utf8_lossy(header);
    let header = (!header.is_empty()).then_some(header.as_ref());
    let Ok(params) = Params::parse(body) else {
        return;
    };
    let _ = params.scopes();
    let Ok(auth) = ClientAuth::from_request(header, &params) else {
        return;
    };
    if let ClientAuth::Secret {
        client_id, secret, ..
    } = &auth
    {
        let shown = format!("{auth:?}");
        assert!(
            secret.len() < 8 || client_id.contains(secret.as_str()) || !shown.contains(secret),
            "Debug shows the secret"
        );
    }
    let core = core();
    let _ = core.token(&auth, &params);
    if params.all("tenant").len() > 1 {
        let _ = core.tenant_tokens(&auth, &params);
    }
    let _ = core.introspect(&auth, &params);
    let _ = core.revoke(&auth, &params);
    let query: BTreeMap<String, String> = ["limit", "page_token"]
        .into_iter()
        .filter_map(|k| Some((k.to_owned(), params.get(k)?.to_owned())))
        .collect();
    let _ = core.tenants(&auth, &query);
}

/// Target `jwt`: the input as a JWT wherever one comes from outside: `private_key_jwt` and
/// federated client assertions, the JWT-bearer grant's assertion, token exchange's
/// `subject_token` (both types) and `actor_token`, a token to introspect or revoke, and the
/// trusted-issuer verifier directly.
pub fn jwt(data: &[u8]) {
    let jwt = String::from_utf8_lossy(data);
    let jwt = jwt.as_ref();
    let issuers = issuers();
    let _ = Issuers::peek_issuer(jwt);
    let _ = issuers.verify_any(jwt, NOW);
    let _ = issuers.verify_each(jwt, NOW);
    let _ = issuers.verify_with(IDP_KEY, jwt, NOW);

    let core = core();
    let cc = params(&[("grant_type", "client_credentials"), ("audience", API)]);
    for client_id in [None, Some(KEY_CLIENT), Some(ED_CLIENT), Some(FED_CLIENT)] {
        let auth = ClientAuth::Assertion {
            client_id: client_id.map(str::to_owned),
            assertion: jwt.to_owned(),
        };
        let _ = core.token(&auth, &cc);
    }
    // The same through the request parser, as the HTTP layer would.
    let form = params(&[
        ("grant_type", "client_credentials"),
        ("client_assertion_type", ASSERTION_TYPE),
        ("client_assertion", jwt),
    ]);
    if let Ok(auth) = ClientAuth::from_request(None, &form) {
        let _ = core.token(&auth, &form);
    }

    let basic = ClientAuth::from_request(Some(&basic_header()), &params(&[]))
        .expect("fixed Basic header parses");
    let _ = core.token(
        &ClientAuth::None,
        &params(&[("grant_type", JWT_BEARER), ("assertion", jwt)]),
    );
    let _ = core.token(
        &basic,
        &params(&[("grant_type", JWT_BEARER), ("assertion", jwt)]),
    );
    for subject_type in [ACCESS_TOKEN_TYPE, JWT_TYPE] {
        let exchange = params(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", jwt),
            ("subject_token_type", subject_type),
            ("audience", API),
        ]);
        let _ = core.token(&basic, &exchange);
    }
    let _ = core.token(
        &basic,
        &params(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", jwt),
            ("subject_token_type", ACCESS_TOKEN_TYPE),
            ("actor_token", jwt),
            ("actor_token_type", ACCESS_TOKEN_TYPE),
        ]),
    );
    let _ = core.introspect(&basic, &params(&[("token", jwt)]));
    let _ = core.revoke(&basic, &params(&[("token", jwt)]));
}

/// Target `jwks`: a JWK Set as fetched from an issuer's `jwks_uri`, every JWK of it parsed as
/// a verification key, the usable ones put in force, a token verified against them; and the
/// input as one JWK.
pub fn jwks(data: &[u8]) {
    if let Ok((keys, _skipped)) = parse_jwks("https://idp.fuzz/jwks", data) {
        for k in &keys {
            let _ = crypto::decoding_key(k);
            let _ = crypto::thumbprint(k);
        }
        let issuers = Issuers::new(vec![(idp_config(), IssuerKeys { keys })]);
        let _ = issuers.verify_any(idp_token(), NOW);
    }
    if let Ok(jwk) = serde_json::from_slice::<Jwk>(data) {
        let _ = crypto::decoding_key(&jwk);
        let _ = crypto::thumbprint(&jwk);
    }
}

/// A valid token of the identity provider, signed once.
fn idp_token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        let key = signing_key(KeyAlgorithm::ES256, "idp", IDP_PEM);
        let claims = serde_json::json!({
            "iss": IDP, "sub": "svc:sync", "aud": IDP_AUDIENCE, "exp": NOW + 600, "iat": NOW,
        });
        crypto::sign_jwt(&key, "JWT", &claims).expect("fixture token signs")
    })
}

/// Target `discovery`: an OpenID / RFC 8414 discovery document, checked against the configured
/// issuer, and the JWKS path the kubernetes preset derives from it.
pub fn discovery(data: &[u8]) {
    let url = "https://idp.fuzz/.well-known/openid-configuration";
    let _ = parse_discovery(url, data, Some(IDP));
    if let Ok(doc) = parse_discovery(url, data, None) {
        let _ = url_allowed(&doc.jwks_uri);
        let _ = kubernetes_jwks_path(&doc);
    }
}

/// Key generation is slow (RSA) and random: the manifests target hands out fixed material.
struct FixedGenerator(u32);

impl Generator for FixedGenerator {
    fn client_id(&mut self) -> String {
        self.0 += 1;
        format!("fuzz-client-{}", self.0)
    }
    fn secret(&mut self) -> String {
        SECRET.to_owned()
    }
    fn key(&mut self, alg: KeyAlgorithm) -> Result<GeneratedKey, CryptoError> {
        match alg {
            KeyAlgorithm::EdDSA => crypto::generate_key(alg),
            other => Err(CryptoError::KeyGeneration(other)),
        }
    }
}

/// Target `manifests`: one YAML file as `dev` reads it, then what `dev` does with what it
/// found: each account's reconcile, the trusted issuers resolved, the token server's registry
/// built.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = s2s_operator::dev::parse_text(text);
    let ctx = service_account::Context {
        issuer: ISSUER,
        ca_bundle: None,
        now: UNIX_EPOCH + Duration::from_secs(NOW),
    };
    let mut generator = FixedGenerator(0);
    let mut accounts = Vec::with_capacity(m.accounts.len());
    for sa in &m.accounts {
        let plan = service_account::reconcile(sa, &Observed::default(), &ctx, &mut generator);
        let mut sa = sa.clone();
        sa.status = Some(plan.status);
        accounts.push(sa);
    }
    for i in &m.issuers {
        let namespace = i.metadata.namespace.as_deref().unwrap_or_default();
        let name = i.metadata.name.as_deref().unwrap_or_default();
        let _ = resolve(namespace, name, &i.spec);
    }
    let _ = s2s_operator::store::build_registry(&accounts, &m.grants, false);
    let _ = s2s_operator::store::build_registry(&accounts, &m.grants, true);
    // AccessTokens: authorized by the grants as the token endpoint would, then reconciled
    // with our key (the jti is random, so only "no panic" is checked here).
    let key = signing_key(KeyAlgorithm::ES256, "signer", SIGNER_PEM);
    for t in &m.access_tokens {
        let (relevant_accounts, grants) = access_token::relevant(t, &accounts, &m.grants);
        let registry = s2s_operator::store::build_registry(&relevant_accounts, &grants, false);
        let account = relevant_accounts.iter().find(|a| {
            a.metadata.namespace == t.metadata.namespace
                && a.metadata.name.as_deref() == Some(t.spec.service_account_name.as_str())
        });
        let world = access_token::World {
            authorized: access_token::authorization(t, account, &registry),
            secret: None,
            signing_key: Ok(&key),
            issuer: ISSUER,
            max_token_lifetime: Duration::from_secs(24 * 3600),
        };
        let now = access_token::Context {
            now: UNIX_EPOCH + Duration::from_secs(NOW),
        };
        let _ = access_token::reconcile(t, &world, &now);
    }
}
