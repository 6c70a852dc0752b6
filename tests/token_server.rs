//! The token server over real HTTP on 127.0.0.1: `s2s-operator dev` runs as a process, a
//! third-party OAuth 2.0 client (`oauth2`) gets tokens with each client authentication
//! method, and the tokens are verified with another JWT library (`jwt-simple`) against the
//! served JWKS. Every error case is answered per RFC 6749 §5.2 and changes nothing.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use serde_json::{Value, json};
use support::{DevServer, free_port, http, jwks, manifests_dir, snapshot, verify_access_token};

const ORDERS: &str = "https://orders.test";
const STOCK: &str = "https://stock.test";

const WORLD: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api:
    audience: https://orders.test
    scopes: [{name: "orders:read"}, {name: "orders:write"}, {name: "orders:admin"}]
  authentication:
    clientSecret: {secretName: orders-creds}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: ungranted-api, namespace: other}
spec:
  api: {audience: https://ungranted.test}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: stock, namespace: warehouse}
spec:
  api: {audience: https://stock.test}
  authentication:
    clientSecret: {secretName: stock-creds}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  scopes: ["orders:*"]
  audiences: ["https://orders.test", "https://ungranted.test", "https://stock.test"]
  tokenLifetime: 10m
  authentication:
    clientSecret: {secretName: worker-creds}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: signer, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication:
    privateKeyJwt: {secretName: signer-key, algorithm: ES256}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: edsigner, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication:
    privateKeyJwt: {secretName: edsigner-key, algorithm: EdDSA}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: sleeper, namespace: team}
spec:
  disabled: true
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication:
    clientSecret: {secretName: sleeper-creds}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: sneaky, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication:
    clientSecret: {secretName: sneaky-creds}
"#;

const GRANTS: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker, namespace: shop}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: https://orders.test
  scopes: ["orders:read", "orders:write"]
---
# The warehouse lets the worker read stock levels of orders: with the grant above, one
# token may name both audiences (RFC 8707), with the scopes both allow.
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker, namespace: warehouse}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: https://stock.test
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: signer, namespace: shop}
spec:
  subject: {serviceAccount: {name: signer, namespace: team}}
  audience: https://orders.test
  scopes: ["orders:*"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: edsigner, namespace: shop}
spec:
  subject: {serviceAccount: {name: edsigner, namespace: team}}
  audience: https://orders.test
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: sleeper, namespace: shop}
spec:
  subject: {serviceAccount: {name: sleeper, namespace: team}}
  audience: https://orders.test
  scopes: ["orders:read"]
---
# A grant in the caller's own namespace for an audience owned in `shop`: it opens nothing.
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: self-service, namespace: team}
spec:
  subject: {serviceAccount: {name: sneaky, namespace: team}}
  audience: https://orders.test
  scopes: ["orders:read"]
"#;

struct World {
    _manifests: tempfile::TempDir,
    _state: tempfile::TempDir,
    server: DevServer,
}

fn start() -> World {
    let manifests = manifests_dir(&[("world.yaml", WORLD), ("grants.yaml", GRANTS)]);
    let state = tempfile::tempdir().unwrap();
    let server = DevServer::start(manifests.path(), state.path(), &[]);
    World {
        _manifests: manifests,
        _state: state,
        server,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn oauth_client(
    s: &DevServer,
    ns: &str,
    secret: &str,
    auth: AuthType,
) -> (
    BasicClient<
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    String,
) {
    let creds = s.secret(ns, secret);
    let client = BasicClient::new(ClientId::new(creds["client_id"].clone()))
        .set_client_secret(ClientSecret::new(creds["client_secret"].clone()))
        .set_token_uri(TokenUrl::new(creds["token_url"].clone()).unwrap())
        .set_auth_type(auth);
    (client, creds["client_id"].clone())
}

/// A raw form POST; returns status, headers and JSON body.
async fn post(
    url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = http()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let body: String = form_encode(form);
    let resp = req.body(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

fn form_encode(form: &[(&str, &str)]) -> String {
    form.iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn assertion_claims(client_id: &str, aud: &str, ttl: u64) -> JWTClaims<NoCustomClaims> {
    Claims::create(jwt_simple::prelude::Duration::from_secs(ttl))
        .with_issuer(client_id)
        .with_subject(client_id)
        .with_audience(aud)
        .with_jwt_id(format!("jti-{}-{}", now(), rand_suffix()))
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn es256_assertion(s: &DevServer, claims: JWTClaims<NoCustomClaims>) -> String {
    let creds = s.secret("team", "signer-key");
    let key = ES256KeyPair::from_pem(&creds["private_key.pem"])
        .unwrap()
        .with_key_id(&creds["key_id"]);
    key.sign(claims).unwrap()
}

async fn assertion_grant(
    s: &DevServer,
    client_id: &str,
    assertion: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    post(
        &s.token_url(),
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("audience", ORDERS),
        ],
    )
    .await
}

fn assert_oauth_error(got: &(u16, reqwest::header::HeaderMap, Value), status: u16, error: &str) {
    assert_eq!(got.2["error"], error, "{got:?}");
    assert_eq!(got.0, status, "{got:?}");
    assert!(got.2["error_description"].is_string());
    assert_eq!(got.1["cache-control"], "no-store");
    if status == 401 {
        assert!(
            got.1.contains_key("www-authenticate"),
            "401 carries WWW-Authenticate"
        );
    }
}

#[tokio::test]
async fn client_secret_basic_and_post_with_a_third_party_client() {
    let w = start();
    let s = &w.server;
    let keys = jwks(&s.issuer).await;
    for auth in [AuthType::BasicAuth, AuthType::RequestBody] {
        let (client, client_id) = oauth_client(s, "team", "worker-creds", auth);
        let token = client
            .exchange_client_credentials()
            .add_scope(Scope::new("orders:read".into()))
            .add_extra_param("audience", ORDERS)
            .request_async(&http())
            .await
            .expect("a token");
        assert_eq!(token.token_type(), &oauth2::basic::BasicTokenType::Bearer);
        assert_eq!(token.expires_in(), Some(Duration::from_secs(600)));
        assert_eq!(token.scopes().unwrap()[0].as_str(), "orders:read");
        let claims = verify_access_token(token.access_token().secret(), &keys, &s.issuer, ORDERS);
        assert_eq!(claims["client_id"], client_id);
        assert_eq!(claims["sub"], client_id);
        assert_eq!(claims["scope"], "orders:read");
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        let (iat, exp, nbf) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
            claims["nbf"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 600);
        assert_eq!(nbf, iat);
    }
}

#[tokio::test]
async fn no_scope_asked_gives_every_granted_scope_and_resource_works_like_audience() {
    let w = start();
    let s = &w.server;
    let creds = s.secret("team", "worker-creds");
    let (id, secret) = (creds["client_id"].as_str(), creds["client_secret"].as_str());
    let got = post(
        &s.token_url(),
        Some((id, secret)),
        &[("grant_type", "client_credentials"), ("resource", ORDERS)],
    )
    .await;
    assert_eq!(got.0, 200, "{got:?}");
    assert_eq!(got.2["scope"], "orders:read orders:write");
    assert_eq!(got.2["token_type"], "Bearer");
    assert_eq!(got.1["cache-control"], "no-store");
    let claims = verify_access_token(
        got.2["access_token"].as_str().unwrap(),
        &jwks(&s.issuer).await,
        &s.issuer,
        ORDERS,
    );
    assert_eq!(claims["scope"], "orders:read orders:write");
}

#[tokio::test]
async fn one_token_for_several_audiences_carries_what_all_of_them_allow() {
    let w = start();
    let s = &w.server;
    let keys = jwks(&s.issuer).await;
    let (client, client_id) = oauth_client(s, "team", "worker-creds", AuthType::BasicAuth);
    // Two targets through the third-party client: `resource` and `audience` both count.
    let token = client
        .exchange_client_credentials()
        .add_extra_param("resource", ORDERS)
        .add_extra_param("audience", STOCK)
        .request_async(&http())
        .await
        .expect("a token for both audiences");
    // No scope asked: what every audience allows (orders:write is granted at orders only).
    assert_eq!(token.scopes().unwrap().len(), 1);
    assert_eq!(token.scopes().unwrap()[0].as_str(), "orders:read");
    let jwt = token.access_token().secret().clone();
    // Each resource server verifies with a JWT library expecting its own audience alone.
    for audience in [ORDERS, STOCK] {
        let claims = verify_access_token(&jwt, &keys, &s.issuer, audience);
        assert_eq!(claims["aud"], json!([ORDERS, STOCK]));
        assert_eq!(claims["client_id"], client_id);
        assert_eq!(claims["scope"], "orders:read");
        let grants: Vec<&str> = claims["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g.as_str().unwrap())
            .collect();
        assert!(
            grants.iter().any(|g| g.starts_with("shop/worker/"))
                && grants.iter().any(|g| g.starts_with("warehouse/worker/")),
            "both grants named: deleting either revokes the token ({grants:?})"
        );
    }

    let worker = s.secret("team", "worker-creds");
    let (id, secret) = (
        worker["client_id"].as_str(),
        worker["client_secret"].as_str(),
    );
    let cc = ("grant_type", "client_credentials");
    let url = s.token_url();
    // A scope one audience does not allow fails the whole request, naming that audience.
    let got = post(
        &url,
        Some((id, secret)),
        &[
            cc,
            ("audience", ORDERS),
            ("audience", STOCK),
            ("scope", "orders:write"),
        ],
    )
    .await;
    assert_oauth_error(&got, 400, "invalid_scope");
    assert!(
        got.2["error_description"].as_str().unwrap().contains(STOCK),
        "{got:?}"
    );
    // An audience without a grant fails it too; so do too many audiences.
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[
                cc,
                ("audience", STOCK),
                ("resource", "https://ungranted.test"),
            ],
        )
        .await,
        400,
        "invalid_target",
    );
    let many: Vec<String> = (0..9).map(|i| format!("https://t{i}.test")).collect();
    let mut form = vec![cc];
    form.extend(many.iter().map(|a| ("audience", a.as_str())));
    assert_oauth_error(
        &post(&url, Some((id, secret)), &form).await,
        400,
        "invalid_target",
    );
    // The same audience twice is one audience: a plain string `aud`.
    let twice = post(
        &url,
        Some((id, secret)),
        &[cc, ("audience", STOCK), ("resource", STOCK)],
    )
    .await;
    assert_eq!(twice.0, 200, "{twice:?}");
    let claims = verify_access_token(
        twice.2["access_token"].as_str().unwrap(),
        &keys,
        &s.issuer,
        STOCK,
    );
    assert_eq!(claims["aud"], STOCK);

    // Introspection: the owner of either audience sees the token, with `aud` as the list.
    let introspect = format!("{}/oauth2/introspect", s.issuer);
    for (ns, name) in [("shop", "orders-creds"), ("warehouse", "stock-creds")] {
        let api = s.secret(ns, name);
        let seen = post(
            &introspect,
            Some((&api["client_id"], &api["client_secret"])),
            &[("token", &jwt)],
        )
        .await;
        assert_eq!(seen.2["active"], true, "{ns}: {seen:?}");
        // `audience` values first, then `resource` ones.
        assert_eq!(seen.2["aud"], json!([STOCK, ORDERS]));
    }
    // Exchange: the two-audience token buys a narrower one for one audience.
    let exchanged = post(
        &url,
        Some((id, secret)),
        &[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", &jwt),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", ORDERS),
        ],
    )
    .await;
    assert_eq!(exchanged.0, 200, "{exchanged:?}");
    let narrow = verify_access_token(
        exchanged.2["access_token"].as_str().unwrap(),
        &keys,
        &s.issuer,
        ORDERS,
    );
    assert_eq!(narrow["aud"], ORDERS);
    // Revocation: the client revokes it, and neither owner sees it active any more.
    let revoked = post(
        &format!("{}/oauth2/revoke", s.issuer),
        Some((id, secret)),
        &[("token", &jwt)],
    )
    .await;
    assert_eq!(revoked.0, 200);
    let api = s.secret("warehouse", "stock-creds");
    let seen = post(
        &introspect,
        Some((&api["client_id"], &api["client_secret"])),
        &[("token", &jwt)],
    )
    .await;
    assert_eq!(seen.2, json!({"active": false}));
}

#[tokio::test]
async fn private_key_jwt_with_es256_and_eddsa() {
    let w = start();
    let s = &w.server;
    let keys = jwks(&s.issuer).await;
    // ES256, addressed to the token endpoint.
    let creds = s.secret("team", "signer-key");
    let credentials_json: Value = serde_json::from_str(&creds["credentials.json"]).unwrap();
    assert_eq!(credentials_json["key_id"], creds["key_id"]);
    let id = creds["client_id"].clone();
    let assertion = es256_assertion(s, assertion_claims(&id, &s.token_url(), 60));
    let got = assertion_grant(s, &id, &assertion).await;
    assert_eq!(got.0, 200, "{got:?}");
    let claims = verify_access_token(
        got.2["access_token"].as_str().unwrap(),
        &keys,
        &s.issuer,
        ORDERS,
    );
    assert_eq!(claims["client_id"], id);
    assert_eq!(claims["scope"], "orders:read");

    // EdDSA, addressed to the issuer, without client_id (found from iss).
    let creds = s.secret("team", "edsigner-key");
    let id = creds["client_id"].clone();
    let key = Ed25519KeyPair::from_pem(&creds["private_key.pem"])
        .unwrap()
        .with_key_id(&creds["key_id"]);
    let assertion = key.sign(assertion_claims(&id, &s.issuer, 60)).unwrap();
    let got = post(
        &s.token_url(),
        None,
        &[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", &assertion),
        ],
    )
    .await;
    assert_eq!(got.0, 200, "{got:?}");
    verify_access_token(
        got.2["access_token"].as_str().unwrap(),
        &keys,
        &s.issuer,
        ORDERS,
    );
}

#[tokio::test]
async fn bad_assertions_are_invalid_client_and_change_nothing() {
    let w = start();
    let s = &w.server;
    let creds = s.secret("team", "signer-key");
    let id = creds["client_id"].clone();
    let before = snapshot(&s.state_dir);

    // Replayed: the same jti twice.
    let once = es256_assertion(s, assertion_claims(&id, &s.token_url(), 60));
    assert_eq!(assertion_grant(s, &id, &once).await.0, 200);
    assert_oauth_error(&assertion_grant(s, &id, &once).await, 401, "invalid_client");

    // Expired (beyond the 60s skew).
    let mut expired = assertion_claims(&id, &s.token_url(), 60);
    expired.expires_at = Some(jwt_simple::prelude::Duration::from_secs(now() - 600));
    expired.issued_at = Some(jwt_simple::prelude::Duration::from_secs(now() - 700));
    assert_oauth_error(
        &assertion_grant(s, &id, &es256_assertion(s, expired)).await,
        401,
        "invalid_client",
    );

    // Too long-lived: an hour is not "short".
    let long = es256_assertion(s, assertion_claims(&id, &s.token_url(), 3600));
    assert_oauth_error(&assertion_grant(s, &id, &long).await, 401, "invalid_client");

    // Wrongly addressed.
    let wrong_aud = es256_assertion(s, assertion_claims(&id, "https://elsewhere.test/token", 60));
    assert_oauth_error(
        &assertion_grant(s, &id, &wrong_aud).await,
        401,
        "invalid_client",
    );

    // iss/sub of another client.
    let other = s.secret("team", "edsigner-key")["client_id"].clone();
    let spoofed = es256_assertion(s, assertion_claims(&other, &s.token_url(), 60));
    assert_oauth_error(
        &assertion_grant(s, &other, &spoofed).await,
        401,
        "invalid_client",
    );

    // No jti.
    let mut no_jti = assertion_claims(&id, &s.token_url(), 60);
    no_jti.jwt_id = None;
    assert_oauth_error(
        &assertion_grant(s, &id, &es256_assertion(s, no_jti)).await,
        401,
        "invalid_client",
    );

    // alg: none.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(
        json!({"iss": id, "sub": id, "aud": s.token_url(), "exp": now() + 60, "jti": "none-1"})
            .to_string(),
    );
    let none = format!("{header}.{body}.");
    assert_oauth_error(&assertion_grant(s, &id, &none).await, 401, "invalid_client");

    // HS256 keyed with the client's public key (the classic confusion attack).
    let public_jwk: Value = jwks_of_client(s, "team", "signer").await;
    let hs = HS256Key::from_bytes(public_jwk.to_string().as_bytes()).with_key_id(&creds["key_id"]);
    let confused = hs
        .authenticate(assertion_claims(&id, &s.token_url(), 60))
        .unwrap();
    assert_oauth_error(
        &assertion_grant(s, &id, &confused).await,
        401,
        "invalid_client",
    );
    let hs =
        HS256Key::from_bytes(creds["private_key.pem"].as_bytes()).with_key_id(&creds["key_id"]);
    let confused = hs
        .authenticate(assertion_claims(&id, &s.token_url(), 60))
        .unwrap();
    assert_oauth_error(
        &assertion_grant(s, &id, &confused).await,
        401,
        "invalid_client",
    );

    // Signed by a key that is not the client's.
    let stranger = ES256KeyPair::generate().with_key_id(&creds["key_id"]);
    let forged = stranger
        .sign(assertion_claims(&id, &s.token_url(), 60))
        .unwrap();
    assert_oauth_error(
        &assertion_grant(s, &id, &forged).await,
        401,
        "invalid_client",
    );

    // Garbage.
    assert_oauth_error(
        &assertion_grant(s, &id, "not.a.jwt").await,
        401,
        "invalid_client",
    );

    assert_eq!(
        snapshot(&s.state_dir),
        before,
        "failed requests changed nothing on disk"
    );
    // And the client still works, once the short lockout those failures earned is over
    // (10 failures in a row lock a client for 1 s).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let fine = es256_assertion(s, assertion_claims(&id, &s.token_url(), 60));
        let status = assertion_grant(s, &id, &fine).await.0;
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still refused: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The public key the server holds for a client, from the saved status.
async fn jwks_of_client(s: &DevServer, ns: &str, name: &str) -> Value {
    let path = s
        .state_dir
        .join(".s2s/status/serviceaccounts")
        .join(ns)
        .join(format!("{name}.json"));
    let status: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    status["credentials"][0]["publicKey"].clone()
}

#[tokio::test]
async fn every_error_case_is_answered_per_rfc_6749() {
    let w = start();
    let s = &w.server;
    let url = s.token_url();
    let creds = s.secret("team", "worker-creds");
    let (id, secret) = (creds["client_id"].as_str(), creds["client_secret"].as_str());
    let before = snapshot(&s.state_dir);
    let cc = ("grant_type", "client_credentials");

    // Client authentication.
    assert_oauth_error(
        &post(&url, Some((id, "wrong")), &[cc, ("audience", ORDERS)]).await,
        401,
        "invalid_client",
    );
    assert_oauth_error(
        &post(&url, Some(("nobody", secret)), &[cc, ("audience", ORDERS)]).await,
        401,
        "invalid_client",
    );
    assert_oauth_error(
        &post(&url, None, &[cc, ("audience", ORDERS)]).await,
        401,
        "invalid_client",
    );
    let unknown = post(&url, Some(("nobody", "x")), &[cc]).await;
    let wrong = post(&url, Some((id, "x")), &[cc]).await;
    assert_eq!(
        unknown.2, wrong.2,
        "an unknown client and a wrong secret look the same"
    );
    let sleeper = s.secret("team", "sleeper-creds");
    assert_oauth_error(
        &post(
            &url,
            Some((&sleeper["client_id"], &sleeper["client_secret"])),
            &[cc, ("audience", ORDERS)],
        )
        .await,
        401,
        "invalid_client",
    );
    // Two methods at once.
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[cc, ("client_id", id), ("client_secret", secret)],
        )
        .await,
        400,
        "invalid_request",
    );

    // Authorization.
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[cc, ("audience", ORDERS), ("scope", "orders:admin")],
        )
        .await,
        400,
        "invalid_scope",
    );
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[
                cc,
                ("audience", ORDERS),
                ("scope", "orders:read billing:read"),
            ],
        )
        .await,
        400,
        "invalid_scope",
    );
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[cc, ("audience", "https://ungranted.test")],
        )
        .await,
        400,
        "invalid_target",
    );
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[cc, ("audience", "https://unknown.test")],
        )
        .await,
        400,
        "invalid_target",
    );
    assert_oauth_error(
        &post(&url, Some((id, secret)), &[cc]).await,
        400,
        "invalid_target",
    );
    assert_oauth_error(
        &post(
            &url,
            Some((id, secret)),
            &[
                cc,
                ("audience", ORDERS),
                ("resource", "https://ungranted.test"),
            ],
        )
        .await,
        400,
        "invalid_target",
    );
    let sneaky = s.secret("team", "sneaky-creds");
    assert_oauth_error(
        &post(
            &url,
            Some((&sneaky["client_id"], &sneaky["client_secret"])),
            &[cc, ("audience", ORDERS)],
        )
        .await,
        400,
        "invalid_target",
    );

    // The request itself.
    assert_oauth_error(
        &post(&url, Some((id, secret)), &[("grant_type", "password")]).await,
        400,
        "unsupported_grant_type",
    );
    assert_oauth_error(
        &post(&url, Some((id, secret)), &[("audience", ORDERS)]).await,
        400,
        "invalid_request",
    );
    assert_oauth_error(
        &post(&url, Some((id, secret)), &[cc, cc]).await,
        400,
        "invalid_request",
    );
    let raw = |body: Vec<u8>, ctype: &'static str| {
        let url = url.clone();
        let (id, secret) = (id.to_owned(), secret.to_owned());
        async move {
            let resp = http()
                .post(&url)
                .basic_auth(id, Some(secret))
                .header("content-type", ctype)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            (
                status,
                headers,
                resp.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    assert_oauth_error(
        &raw(
            b"{\"grant_type\":\"client_credentials\"}".to_vec(),
            "application/json",
        )
        .await,
        400,
        "invalid_request",
    );
    let mut huge = b"grant_type=client_credentials&scope=".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert_oauth_error(
        &raw(huge, "application/x-www-form-urlencoded").await,
        413,
        "invalid_request",
    );
    oversized_body_is_not_read_as_a_request(&url).await;
    let garbled = http()
        .post(&url)
        .header("authorization", "Basic %%%")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status().as_u16(), 400);
    assert_eq!(
        garbled.json::<Value>().await.unwrap()["error"],
        "invalid_request"
    );

    assert_eq!(
        snapshot(&s.state_dir),
        before,
        "failed requests changed nothing on disk"
    );
    let ok = post(&url, Some((id, secret)), &[cc, ("audience", ORDERS)]).await;
    assert_eq!(ok.0, 200, "{ok:?}");

    // Nothing secret in the logs, even at debug level.
    let logs = s.logs();
    for (k, v) in creds.iter().chain(sleeper.iter()) {
        if k.starts_with("client_secret") {
            assert!(
                !logs.contains(v.as_str()),
                "a client secret appears in the logs"
            );
        }
    }
    assert!(!logs.contains(ok.2["access_token"].as_str().unwrap()));
    assert!(!logs.contains("PRIVATE KEY"));
}

#[tokio::test]
async fn discovery_jwks_introspection_and_revocation() {
    let w = start();
    let s = &w.server;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let meta: Value = http()
            .get(format!("{}{path}", s.issuer))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(meta["issuer"], s.issuer);
        assert_eq!(meta["token_endpoint"], s.token_url());
        assert_eq!(meta["jwks_uri"], format!("{}/jwks.json", s.issuer));
        assert!(
            meta["token_endpoint_auth_methods_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("private_key_jwt"))
        );
    }
    let keys = jwks(&s.issuer).await;
    let key = &keys["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert!(key.get("d").is_none(), "no private member in the JWKS");

    let worker = s.secret("team", "worker-creds");
    let (id, secret) = (
        worker["client_id"].as_str(),
        worker["client_secret"].as_str(),
    );
    let got = post(
        &s.token_url(),
        Some((id, secret)),
        &[("grant_type", "client_credentials"), ("audience", ORDERS)],
    )
    .await;
    let token = got.2["access_token"].as_str().unwrap().to_owned();
    let introspect = format!("{}/oauth2/introspect", s.issuer);
    let revoke = format!("{}/oauth2/revoke", s.issuer);

    // The token's own client, and the API that owns its audience, see it.
    let mine = post(&introspect, Some((id, secret)), &[("token", &token)]).await;
    assert_eq!(mine.0, 200);
    assert_eq!(mine.2["active"], true);
    assert_eq!(mine.2["client_id"], id);
    assert_eq!(mine.2["aud"], ORDERS);
    let api = s.secret("shop", "orders-creds");
    let by_api = post(
        &introspect,
        Some((&api["client_id"], &api["client_secret"])),
        &[("token", &token)],
    )
    .await;
    assert_eq!(by_api.2["active"], true);
    // A bystander learns nothing.
    let other = s.secret("team", "sneaky-creds");
    let by_other = post(
        &introspect,
        Some((&other["client_id"], &other["client_secret"])),
        &[("token", &token)],
    )
    .await;
    assert_eq!(by_other.2, json!({"active": false}));
    // Introspection needs client authentication.
    assert_oauth_error(
        &post(&introspect, None, &[("token", &token)]).await,
        401,
        "invalid_client",
    );
    // Garbage is inactive.
    assert_eq!(
        post(&introspect, Some((id, secret)), &[("token", "x.y.z")])
            .await
            .2,
        json!({"active": false})
    );

    // Someone else's revocation is accepted and does nothing (RFC 7009 §2.1).
    let r = post(
        &revoke,
        Some((&other["client_id"], &other["client_secret"])),
        &[("token", &token)],
    )
    .await;
    assert_eq!(r.0, 200);
    assert_eq!(
        post(&introspect, Some((id, secret)), &[("token", &token)])
            .await
            .2["active"],
        true
    );
    // The owner revokes it.
    assert_eq!(
        post(
            &revoke,
            Some((id, secret)),
            &[("token", &token), ("token_type_hint", "access_token")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        post(&introspect, Some((id, secret)), &[("token", &token)])
            .await
            .2["active"],
        false
    );
    assert_oauth_error(
        &post(
            &revoke,
            Some((id, secret)),
            &[("token", &token), ("token_type_hint", "id_token")],
        )
        .await,
        400,
        "unsupported_token_type",
    );

    // Health and metrics.
    assert_eq!(
        http()
            .get(format!("{}/healthz", s.issuer))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http()
            .get(format!("{}/readyz", s.issuer))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let metrics = http()
        .get(format!("{}/metrics", s.issuer))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"s2s_http_requests_total{endpoint="token",grant_type="client_credentials",outcome="ok"} 1"#), "{metrics}");
    assert!(metrics.contains("s2s_http_request_duration_seconds_bucket"));
    assert!(!metrics.contains(id), "metrics never carry client ids");
}

#[tokio::test]
async fn state_survives_a_restart_and_manifest_edits_apply_live() {
    let manifests = manifests_dir(&[("world.yaml", WORLD), ("grants.yaml", GRANTS)]);
    let state = tempfile::tempdir().unwrap();
    let first = DevServer::start(manifests.path(), state.path(), &[]);
    let creds = first.secret("team", "worker-creds");
    let key = first.secret("team", "signer-key");
    let got = post(
        &first.token_url(),
        Some((&creds["client_id"], &creds["client_secret"])),
        &[("grant_type", "client_credentials"), ("audience", ORDERS)],
    )
    .await;
    let token = got.2["access_token"].as_str().unwrap().to_owned();
    drop(first);

    let second = DevServer::start(manifests.path(), state.path(), &[]);
    let after = second.secret("team", "worker-creds");
    for k in ["client_id", "client_secret"] {
        assert_eq!(after[k], creds[k], "nothing regenerated on restart");
    }
    assert_eq!(
        after["token_url"],
        second.token_url(),
        "the token URL follows the new address"
    );
    assert_eq!(
        second.secret("team", "signer-key")["private_key.pem"],
        key["private_key.pem"]
    );
    // The old token still verifies against the new process's JWKS (same signing key).
    verify_access_token(
        &token,
        &jwks(&second.issuer).await,
        &first_issuer(&got, &second),
        ORDERS,
    );
    // The secret still works.
    let again = post(
        &second.token_url(),
        Some((&creds["client_id"], &creds["client_secret"])),
        &[("grant_type", "client_credentials"), ("audience", ORDERS)],
    )
    .await;
    assert_eq!(again.0, 200);

    // Disable the worker by editing its manifest: picked up without a restart.
    let edited = WORLD.replace(
        "  tokenLifetime: 10m\n",
        "  tokenLifetime: 10m\n  disabled: true\n",
    );
    std::fs::write(manifests.path().join("world.yaml"), edited).unwrap();
    second.wait_for_log("manifests changed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = post(
            &second.token_url(),
            Some((&creds["client_id"], &creds["client_secret"])),
            &[("grant_type", "client_credentials"), ("audience", ORDERS)],
        )
        .await;
        if r.0 == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit was not applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new account in a new file appears, with credentials.
    std::fs::write(
        manifests.path().join("new.yaml"),
        "apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: newcomer, namespace: team}\nspec:\n  audiences: [\"https://orders.test\"]\n  authentication: {clientSecret: {secretName: newcomer-creds}}\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !state
        .path()
        .join("team/newcomer-creds/client_secret")
        .exists()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the new account was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_revoked_token_stays_revoked_after_a_restart() {
    let manifests = manifests_dir(&[("world.yaml", WORLD), ("grants.yaml", GRANTS)]);
    let state = tempfile::tempdir().unwrap();
    // The same address both times: the issuer URL stays, so the old token is still one of the
    // server's own and only the deny list can make it inactive.
    let listen = format!("127.0.0.1:{}", free_port());
    let first = DevServer::start_at(manifests.path(), state.path(), &listen, &[]);
    let creds = first.secret("team", "worker-creds");
    let auth = Some((creds["client_id"].as_str(), creds["client_secret"].as_str()));
    let mint = || async {
        let got = post(
            &first.token_url(),
            auth,
            &[("grant_type", "client_credentials"), ("audience", ORDERS)],
        )
        .await;
        got.2["access_token"].as_str().unwrap().to_owned()
    };
    let (revoked, kept) = (mint().await, mint().await);
    let introspect = format!("{}/oauth2/introspect", first.issuer);
    let r = post(
        &format!("{}/oauth2/revoke", first.issuer),
        auth,
        &[("token", &revoked)],
    )
    .await;
    assert_eq!(r.0, 200);
    assert_eq!(
        post(&introspect, auth, &[("token", &revoked)]).await.2["active"],
        false
    );
    drop(first);

    let second = DevServer::start_at(manifests.path(), state.path(), &listen, &[]);
    assert_eq!(second.issuer, format!("http://{listen}"));
    assert_eq!(
        post(&introspect, auth, &[("token", &kept)]).await.2["active"],
        true,
        "an unrevoked token from before the restart is active"
    );
    assert_eq!(
        post(&introspect, auth, &[("token", &revoked)]).await.2,
        json!({"active": false}),
        "the revocation survived the restart"
    );
}

/// The issuer that signed a token (the first process's port differs from the second's).
fn first_issuer(got: &(u16, reqwest::header::HeaderMap, Value), _second: &DevServer) -> String {
    let token = got.2["access_token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["iss"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_example_account_with_credentials_gets_a_token() {
    let state = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let s = DevServer::start(&examples, state.path(), &[]);
    let keys = jwks(&s.issuer).await;
    let mut served = 0;
    for (ns, secret_name, audience) in [
        (
            "billing",
            "billing-worker-credentials",
            "https://orders.example.com",
        ),
        (
            "analytics",
            "kpi-calculator-credentials",
            "https://data.example.com/tenants/acme",
        ),
        (
            "reporting",
            "report-generator-key",
            "https://orders.example.com",
        ),
    ] {
        let creds = s.secret(ns, secret_name);
        let got = if let Some(secret) = creds.get("client_secret") {
            post(
                &s.token_url(),
                Some((&creds["client_id"], secret)),
                &[("grant_type", "client_credentials"), ("audience", audience)],
            )
            .await
        } else {
            let key = ES256KeyPair::from_pem(&creds["private_key.pem"])
                .unwrap()
                .with_key_id(&creds["key_id"]);
            let assertion = key
                .sign(assertion_claims(
                    &creds["client_id"],
                    &creds["token_url"],
                    60,
                ))
                .unwrap();
            post(
                &s.token_url(),
                None,
                &[
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", &assertion),
                    ("audience", audience),
                ],
            )
            .await
        };
        assert_eq!(got.0, 200, "{ns}/{secret_name}: {got:?}");
        verify_access_token(
            got.2["access_token"].as_str().unwrap(),
            &keys,
            &s.issuer,
            audience,
        );
        served += 1;
    }
    assert_eq!(served, 3);
    let banner = s.logs();
    assert!(banner.contains("billing/billing-worker"), "{banner}");
    assert!(
        !banner.contains("warning"),
        "examples load cleanly:\n{banner}"
    );
}

/// A body over the limit, whose tail is a request of its own, on one kept-alive connection:
/// the answer is 413, the connection then closes (saying so), and the request hidden in the
/// body is never answered (no request smuggling through an unread body).
async fn oversized_body_is_not_read_as_a_request(url: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let hidden = b"GET /jwks.json HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut body = b"grant_type=client_credentials&scope=".to_vec();
    body.extend(std::iter::repeat_n(b'a', 64 * 1024));
    body.extend_from_slice(hidden);
    let head = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before the whole body is written.
    let _ = conn.write_all(&body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(
        read.is_ok(),
        "the connection stays open after the 413: {text}"
    );
    assert!(text.starts_with("http/1.1 413"), "{text}");
    assert_eq!(text.matches("http/1.1 ").count(), 1, "one answer: {text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(
        !text.contains("\"keys\""),
        "the hidden request was answered: {text}"
    );
}
