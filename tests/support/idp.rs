//! A test identity provider on 127.0.0.1: a real OpenID discovery document and JWKS, and
//! JWTs signed with real keys (RS256 and ES256 through `s2s_operator::crypto`; ES384, which
//! the operator never generates, straight from aws-lc-rs).
//!
//! ```ignore
//! let idp = Idp::start().await;
//! let jwt = idp.mint(json!({"sub": "ci", "aud": "api://x"}));
//! idp.add_es384_key();   // a P-384 key joins the JWKS
//! let jwt = idp.mint_es384(json!({"sub": "ci", "aud": "api://x"}));
//! idp.rotate();          // fresh keys; the old ones leave the JWKS
//! idp.set_down(true);    // every endpoint answers 503
//! assert_eq!(idp.fetch_count(), 1);
//! ```

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use s2s_operator::crypto::{Jwk, KeyAlgorithm, SigningKey, generate_key, thumbprint};
use serde_json::{Value, json};

/// Path of the JWKS.
pub const JWKS_PATH: &str = "/jwks";

struct Shared {
    issuer: String,
    /// Every key published, oldest first; the last of an algorithm signs.
    keys: Mutex<Vec<Arc<SigningKey>>>,
    /// P-384 keys, published after `keys`; the last signs ES384 tokens.
    es384: Mutex<Vec<Arc<Es384Key>>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    /// The `issuer` the discovery document names (the real one unless overridden).
    discovery_issuer: Mutex<Option<String>>,
}

/// A running test IdP; stops when dropped.
pub struct Idp {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An ES384 key: `SigningKey` only knows the algorithms the operator generates.
struct Es384Key {
    pair: EcdsaKeyPair,
    jwk: Jwk,
}

impl Es384Key {
    fn generate() -> Arc<Self> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).expect("P-384 key");
        // An uncompressed SEC1 point: 0x04 || x || y, 48 bytes each on P-384.
        let (x, y) = pair.public_key().as_ref()[1..].split_at(48);
        let mut jwk = Jwk {
            kty: "EC".into(),
            crv: Some("P-384".into()),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            alg: Some("ES384".into()),
            use_: Some("sig".into()),
            ..Jwk::default()
        };
        jwk.kid = Some(thumbprint(&jwk).expect("thumbprint"));
        Arc::new(Es384Key { pair, jwk })
    }

    fn kid(&self) -> &str {
        self.jwk.kid.as_deref().unwrap_or_default()
    }
}

fn new_key(alg: KeyAlgorithm) -> Arc<SigningKey> {
    let k = generate_key(alg).expect("key generation");
    Arc::new(SigningKey::from_pem(alg, k.kid, &k.private_pem).expect("key parses"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Idp {
    /// Starts an IdP with one RS256 and one ES256 key.
    pub async fn start() -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            issuer,
            keys: Mutex::new(vec![
                new_key(KeyAlgorithm::RS256),
                new_key(KeyAlgorithm::ES256),
            ]),
            es384: Mutex::new(vec![]),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            discovery_issuer: Mutex::new(None),
        });
        let router = axum::Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route(JWKS_PATH, get(jwks))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Idp { shared, server }
    }

    /// The issuer URL (`http://127.0.0.1:PORT`, no trailing slash).
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.shared.issuer)
    }

    /// The published JWK Set.
    pub fn jwks(&self) -> Value {
        jwks_of(&self.shared)
    }

    /// The kid of the key that signs `alg` tokens now.
    pub fn kid(&self, alg: KeyAlgorithm) -> String {
        self.signer(alg).kid().to_owned()
    }

    fn signer(&self, alg: KeyAlgorithm) -> Arc<SigningKey> {
        self.shared
            .keys
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|k| k.algorithm() == alg)
            .cloned()
            .unwrap_or_else(|| panic!("the IdP has no {alg:?} key"))
    }

    /// An RS256 JWT with these claims; `iss` (the issuer), `iat` (now) and `exp` (now + 5m)
    /// are filled in unless given.
    pub fn mint(&self, claims: Value) -> String {
        self.mint_with(KeyAlgorithm::RS256, None, json!({}), claims)
    }

    /// A JWT signed by the current key of `alg`; `kid` replaces the header's kid (`Some("")`
    /// removes it), `header` members are merged into the header (e.g. `{"typ": "at+jwt"}`,
    /// or `{"alg": "none"}` to lie about the algorithm). Claims as for [`mint`](Self::mint).
    pub fn mint_with(
        &self,
        alg: KeyAlgorithm,
        kid: Option<&str>,
        header: Value,
        claims: Value,
    ) -> String {
        let key = self.signer(alg);
        let mut h = json!({"alg": alg.jws_name(), "kid": key.kid(), "typ": "JWT"});
        match kid {
            Some("") => {
                h.as_object_mut().unwrap().remove("kid");
            }
            Some(k) => h["kid"] = json!(k),
            None => {}
        }
        for (k, v) in header.as_object().cloned().unwrap_or_default() {
            h[k] = v;
        }
        self.finish(h, claims, |input| key.sign(input).expect("signs"))
    }

    /// An ES384 JWT with these claims, signed by the newest P-384 key (see
    /// [`add_es384_key`](Self::add_es384_key)). Claims as for [`mint`](Self::mint).
    pub fn mint_es384(&self, claims: Value) -> String {
        let key = self
            .shared
            .es384
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the IdP has no ES384 key: call add_es384_key first");
        let h = json!({"alg": "ES384", "kid": key.kid(), "typ": "JWT"});
        self.finish(h, claims, |input| {
            key.pair
                .sign(&SystemRandom::new(), input)
                .expect("signs")
                .as_ref()
                .to_vec()
        })
    }

    /// Fills in `iss`, `iat` and `exp` unless given, and signs `header.claims` with `sign`.
    fn finish(&self, header: Value, claims: Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let mut c = claims;
        let t = now();
        let obj = c.as_object_mut().expect("claims are an object");
        obj.entry("iss").or_insert(json!(self.shared.issuer));
        obj.entry("iat").or_insert(json!(t));
        obj.entry("exp").or_insert(json!(t + 300));
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap())
        );
        let sig = sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// An `alg: none` JWT with no signature (must be refused). Claims as for
    /// [`mint`](Self::mint).
    pub fn mint_unsigned(&self, claims: Value) -> String {
        let jwt = self.mint_with(KeyAlgorithm::RS256, None, json!({"alg": "none"}), claims);
        let unsigned = jwt.rsplit_once('.').map(|(input, _)| input).unwrap_or(&jwt);
        format!("{unsigned}.")
    }

    /// An HS256 JWT whose HMAC key is the current RS256 public key (its JWK as JSON), the
    /// classic algorithm-confusion attack (must be refused). Claims as for
    /// [`mint`](Self::mint).
    pub fn mint_hs256_with_public_key(&self, claims: Value) -> String {
        let key = self.signer(KeyAlgorithm::RS256);
        let secret = serde_json::to_vec(&key.public_jwk()).unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(key.kid().to_owned());
        let signed = self.mint_with(KeyAlgorithm::RS256, None, json!({}), claims);
        // The same claims (with the defaults filled in), re-signed with HMAC.
        let payload = signed.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .unwrap()
    }

    /// New RS256 and ES256 keys (and no ES384 key); the old ones leave the JWKS. Returns the
    /// new RS256 kid.
    pub fn rotate(&self) -> String {
        let rs = new_key(KeyAlgorithm::RS256);
        let kid = rs.kid().to_owned();
        *self.shared.keys.lock().unwrap() = vec![rs, new_key(KeyAlgorithm::ES256)];
        self.shared.es384.lock().unwrap().clear();
        kid
    }

    /// Publishes one more P-384 key, which signs [`mint_es384`](Self::mint_es384) tokens from
    /// now on. Returns its kid.
    pub fn add_es384_key(&self) -> String {
        let k = Es384Key::generate();
        let kid = k.kid().to_owned();
        self.shared.es384.lock().unwrap().push(k);
        kid
    }

    /// Publishes one more key of `alg`, which signs from now on; the others stay published.
    /// Returns its kid.
    pub fn add_key(&self, alg: KeyAlgorithm) -> String {
        let k = new_key(alg);
        let kid = k.kid().to_owned();
        self.shared.keys.lock().unwrap().push(k);
        kid
    }

    /// While down, every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// Makes the discovery document name another issuer (`None`: the real one).
    pub fn set_discovery_issuer(&self, issuer: Option<String>) {
        *self.shared.discovery_issuer.lock().unwrap() = issuer;
    }

    /// How many times the JWKS was requested (answered or not).
    pub fn fetch_count(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was requested.
    pub fn discovery_count(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }
}

fn jwks_of(shared: &Shared) -> Value {
    let mut keys: Vec<Value> = shared
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| serde_json::to_value(k.public_jwk()).unwrap())
        .collect();
    keys.extend(
        shared
            .es384
            .lock()
            .unwrap()
            .iter()
            .map(|k| serde_json::to_value(&k.jwk).unwrap()),
    );
    json!({ "keys": keys })
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Response {
    shared.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let issuer = shared
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| shared.issuer.clone());
    json_response(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}{JWKS_PATH}", shared.issuer),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if shared.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    json_response(jwks_of(&shared))
}

fn json_response(v: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}
