//! Federation over real HTTP: `dev` as a process trusting a test identity provider served on
//! 127.0.0.1 (real discovery, JWKS and signatures). Federated client authentication, the
//! JWT-bearer grant, token exchange chains with nested `act` (checked with jwt-simple, not
//! the server's JWT library), and the edges: wildcards, wrong audience, expiry, HMAC, unknown
//! kid after the IdP rotates, IdP down, and a deleted TrustedIssuer; ES384 (P-384) tokens.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::idp::Idp;
use support::scenario::eventually;
use support::{DevServer, http, jwks, manifests_dir, verify_access_token};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn issuer_yaml(issuer: &str) -> String {
    issuer_yaml_allowing(issuer, &["RS256", "ES256"])
}

/// The TrustedIssuer `team/idp` for `issuer`, allowing `algorithms`.
fn issuer_yaml_allowing(issuer: &str, algorithms: &[&str]) -> String {
    let algorithms = serde_json::to_string(algorithms).unwrap();
    format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TrustedIssuer
metadata: {{name: idp, namespace: team}}
spec:
  issuer: "{issuer}"
  audiences: ["s2s"]
  algorithms: {algorithms}
  refreshInterval: 1m
"#
    )
}

const WORLD: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders-api, namespace: orders}
spec: {api: {audience: "https://orders.test", scopes: [{name: "orders:read"}, {name: "orders:write"}]}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: agent, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication:
    federated:
      - issuerRef: {name: idp}
        subject: "system:serviceaccount:team:*"
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: agent, namespace: orders}
spec:
  subject: {serviceAccount: {name: agent, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: partner-sync, namespace: orders}
spec:
  subject: {issuerRef: {name: idp, namespace: team}, subject: "svc-sync"}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
# The exchange chain: frontend -> bff -> backend -> ledger.
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: frontend, namespace: chain}
spec:
  audiences: ["https://bff.test"]
  authentication: {clientSecret: {secretName: frontend}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: bff, namespace: chain}
spec:
  api: {audience: "https://bff.test"}
  audiences: ["https://backend.test"]
  authentication: {clientSecret: {secretName: bff}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: backend, namespace: chain}
spec:
  api: {audience: "https://backend.test"}
  audiences: ["https://ledger.test"]
  authentication: {clientSecret: {secretName: backend}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: ledger, namespace: chain}
spec: {api: {audience: "https://ledger.test"}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: frontend-to-bff, namespace: chain}
spec:
  subject: {serviceAccount: {name: frontend}}
  audience: "https://bff.test"
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: bff-for-anyone-of-ours, namespace: chain}
spec:
  subject: {serviceAccount: {name: bff}}
  audience: "https://backend.test"
  delegation: {}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: bff-for-idp-users, namespace: chain}
spec:
  subject: {serviceAccount: {name: bff}}
  audience: "https://backend.test"
  delegation:
    issuers: [{name: idp, namespace: team}]
    subjects: ["user:*"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: backend-for-anyone-of-ours, namespace: chain}
spec:
  subject: {serviceAccount: {name: backend}}
  audience: "https://ledger.test"
  delegation: {}
"#;

struct World {
    idp: Idp,
    manifests: tempfile::TempDir,
    _state: tempfile::TempDir,
    dev: DevServer,
}

async fn start() -> World {
    start_with(Idp::start().await).await
}

/// A world around an IdP the test has prepared (e.g. with more keys).
async fn start_with(idp: Idp) -> World {
    let manifests = manifests_dir(&[
        ("world.yaml", WORLD),
        ("issuer.yaml", &issuer_yaml(&idp.issuer())),
    ]);
    let state = tempfile::tempdir().unwrap();
    let dev = DevServer::start(manifests.path(), state.path(), &[]);
    World {
        idp,
        manifests,
        _state: state,
        dev,
    }
}

/// A form POST, optionally with HTTP Basic; status and JSON body.
async fn post(url: &str, basic: Option<(&str, &str)>, form: &[(&str, &str)]) -> (u16, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut req = http()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        req = req.basic_auth(id, Some(secret));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn claims(sub: &str, aud: &str, ttl: i64) -> Value {
    let now = now() as i64;
    json!({"sub": sub, "aud": aud, "iat": now, "exp": now + ttl})
}

/// The federated account's client id, from the status `dev` keeps.
fn client_id_of(w: &World, ns: &str, name: &str) -> String {
    let path = w
        .dev
        .state_dir
        .join(".s2s/status/serviceaccounts")
        .join(ns)
        .join(format!("{name}.json"));
    let status: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    status["clientId"].as_str().unwrap().to_owned()
}

async fn federated(w: &World, assertion: &str) -> (u16, Value) {
    post(
        &w.dev.token_url(),
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("audience", "https://orders.test"),
        ],
    )
    .await
}

#[tokio::test]
async fn a_projected_style_token_authenticates_a_federated_account() {
    let w = start().await;
    let agent = client_id_of(&w, "team", "agent");
    let jwt = w
        .idp
        .mint(claims("system:serviceaccount:team:runner", "s2s", 600));
    let (status, body) = eventually(Duration::from_secs(20), "the issuer's keys", || async {
        let r = federated(&w, &jwt).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(status, 200);
    let token = body["access_token"].as_str().unwrap();
    let c = verify_access_token(
        token,
        &jwks(&w.dev.issuer).await,
        &w.dev.issuer,
        "https://orders.test",
    );
    assert_eq!(c["sub"], agent.as_str());
    assert_eq!(c["client_id"], agent.as_str());
    assert_eq!(c["scope"], "orders:read");

    // Passing the client id works too; a federated token is reusable (no jti replay rule).
    let (status, _) = post(
        &w.dev.token_url(),
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &agent),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", &jwt),
        ],
    )
    .await;
    assert_eq!(status, 200);

    // Edges, all invalid_client with 401, none revealing why beyond the RFC code.
    let cases = [
        (
            "other namespace",
            w.idp
                .mint(claims("system:serviceaccount:teamx:runner", "s2s", 600)),
        ),
        (
            "prefix only",
            w.idp.mint(claims("system:serviceaccount:team", "s2s", 600)),
        ),
        (
            "wrong audience",
            w.idp
                .mint(claims("system:serviceaccount:team:runner", "other", 600)),
        ),
        (
            "expired",
            w.idp
                .mint(claims("system:serviceaccount:team:runner", "s2s", -300)),
        ),
        ("wrong issuer", {
            let mut c = claims("system:serviceaccount:team:runner", "s2s", 600);
            c["iss"] = json!("https://evil.example.com");
            w.idp.mint(c)
        }),
        (
            "HS256 signed with the public key",
            w.idp.mint_hs256_with_public_key(claims(
                "system:serviceaccount:team:runner",
                "s2s",
                600,
            )),
        ),
        (
            "alg none",
            w.idp
                .mint_unsigned(claims("system:serviceaccount:team:runner", "s2s", 600)),
        ),
    ];
    for (what, jwt) in &cases {
        let (status, body) = federated(&w, jwt).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}"
        );
    }
    assert!(
        !w.dev.logs().contains(&jwt[..40]),
        "no assertion in the logs"
    );
}

#[tokio::test]
async fn issuer_key_rotation_outage_and_deletion() {
    let w = start().await;
    let jwt = w
        .idp
        .mint(claims("system:serviceaccount:team:runner", "s2s", 600));
    eventually(Duration::from_secs(20), "the issuer's keys", || async {
        (federated(&w, &jwt).await.0 == 200).then_some(())
    })
    .await;

    // The IdP rotates: a token with the new kid gets through once the keys are refetched
    // (an unknown kid triggers that), and tokens with the old key stop.
    w.idp.rotate();
    let fresh = w
        .idp
        .mint(claims("system:serviceaccount:team:runner", "s2s", 600));
    eventually(Duration::from_secs(40), "the new IdP key", || async {
        (federated(&w, &fresh).await.0 == 200).then_some(())
    })
    .await;

    // The IdP goes down: the last good keys keep working.
    w.idp.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(federated(&w, &fresh).await.0, 200);
    w.idp.set_down(false);

    // The TrustedIssuer is deleted: its tokens are refused at once (next manifest poll).
    std::fs::remove_file(w.manifests.path().join("issuer.yaml")).unwrap();
    eventually(
        Duration::from_secs(10),
        "the issuer to be forgotten",
        || async { (federated(&w, &fresh).await.0 == 401).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn jwt_bearer_grant_for_a_subject_a_grant_names() {
    let w = start().await;
    let assertion = w.idp.mint(claims("svc-sync", "s2s", 600));
    let ask = |a: String| {
        let url = w.dev.token_url();
        async move {
            post(
                &url,
                None,
                &[
                    ("grant_type", JWT_BEARER),
                    ("assertion", &a),
                    ("scope", "orders:read"),
                ],
            )
            .await
        }
    };
    let (_, body) = eventually(Duration::from_secs(20), "a JWT-bearer token", || async {
        let r = ask(assertion.clone()).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    let c = verify_access_token(
        body["access_token"].as_str().unwrap(),
        &jwks(&w.dev.issuer).await,
        &w.dev.issuer,
        "https://orders.test",
    );
    assert_eq!(c["sub"], "svc-sync");
    assert_eq!(c["scope"], "orders:read");

    // A subject no grant names, a scope the grant lacks, a bad assertion.
    let (status, body) = ask(w.idp.mint(claims("svc-other", "s2s", 600))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let (status, body) = post(
        &w.dev.token_url(),
        None,
        &[
            ("grant_type", JWT_BEARER),
            ("assertion", &assertion),
            ("scope", "orders:write"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = ask(w.idp.mint(claims("svc-sync", "s2s", -300))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = post(&w.dev.token_url(), None, &[("grant_type", JWT_BEARER)]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

async fn secret_token(w: &World, name: &str, audience: &str) -> String {
    let creds = w.dev.secret("chain", name);
    let (status, body) = post(
        &w.dev.token_url(),
        Some((&creds["client_id"], &creds["client_secret"])),
        &[("grant_type", "client_credentials"), ("audience", audience)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn exchange(w: &World, actor: &str, subject: &str, audience: &str) -> (u16, Value) {
    let creds = w.dev.secret("chain", actor);
    post(
        &w.dev.token_url(),
        Some((&creds["client_id"], &creds["client_secret"])),
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", audience),
        ],
    )
    .await
}

#[tokio::test]
async fn an_exchange_chain_nests_act_and_delegation_needs_a_grant() {
    let w = start().await;
    let iss = w.dev.issuer.clone();
    let frontend = w.dev.secret("chain", "frontend")["client_id"].clone();
    let bff = w.dev.secret("chain", "bff")["client_id"].clone();
    let backend = w.dev.secret("chain", "backend")["client_id"].clone();

    // frontend → bff → backend → ledger.
    let t1 = secret_token(&w, "frontend", "https://bff.test").await;
    let (status, r2) = exchange(&w, "bff", &t1, "https://backend.test").await;
    assert_eq!(status, 200, "{r2}");
    assert_eq!(r2["issued_token_type"], ACCESS_TOKEN);
    assert_eq!(r2["token_type"], "Bearer");
    let t2 = r2["access_token"].as_str().unwrap();
    let c2 = verify_access_token(t2, &jwks(&iss).await, &iss, "https://backend.test");
    assert_eq!(c2["sub"], frontend.as_str(), "the original subject stays");
    assert_eq!(c2["act"], json!({"sub": bff}));

    let (status, r3) = exchange(&w, "backend", t2, "https://ledger.test").await;
    assert_eq!(status, 200, "{r3}");
    let c3 = verify_access_token(
        r3["access_token"].as_str().unwrap(),
        &jwks(&iss).await,
        &iss,
        "https://ledger.test",
    );
    assert_eq!(c3["sub"], frontend.as_str());
    assert_eq!(
        c3["act"],
        json!({"sub": backend, "act": {"sub": bff}}),
        "prior actors nested"
    );
    assert_eq!(c3["client_id"], backend.as_str());
    assert!(
        c3["exp"].as_u64().unwrap() <= c2["exp"].as_u64().unwrap(),
        "never outlives its subject"
    );

    // No delegation in frontend's grant: it may exchange its own token (impersonation, no
    // act) but nobody else's.
    let (status, own) = exchange(&w, "frontend", &t1, "https://bff.test").await;
    assert_eq!(status, 200, "{own}");
    let c = verify_access_token(
        own["access_token"].as_str().unwrap(),
        &jwks(&iss).await,
        &iss,
        "https://bff.test",
    );
    assert!(c.get("act").is_none_or(Value::is_null));
    let bffs_own = secret_token(&w, "bff", "https://backend.test").await;
    let (status, body) = exchange(&w, "frontend", &bffs_own, "https://bff.test").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unauthorized_client", "{body}");

    // External users: bff may act for the IdP's `user:*`, not for its services.
    let user = w.idp.mint(claims("user:alice", "s2s", 600));
    let (status, body) = eventually(Duration::from_secs(20), "the issuer's keys", || async {
        let r = exchange(&w, "bff", &user, "https://backend.test").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    let c = verify_access_token(
        body["access_token"].as_str().unwrap(),
        &jwks(&iss).await,
        &iss,
        "https://backend.test",
    );
    assert_eq!((status, c["sub"].as_str()), (200, Some("user:alice")));
    assert_eq!(c["act"], json!({"sub": bff}));
    let service = w.idp.mint(claims("svc-sync", "s2s", 600));
    let (status, body) = exchange(&w, "bff", &service, "https://backend.test").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );

    // may_act names someone else: refused.
    let mut c = claims("user:bob", "s2s", 600);
    c["may_act"] = json!({"sub": "someone-else"});
    let (status, body) = exchange(&w, "bff", &w.idp.mint(c), "https://backend.test").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let mut c = claims("user:bob", "s2s", 600);
    c["may_act"] = json!({"sub": bff});
    assert_eq!(
        exchange(&w, "bff", &w.idp.mint(c), "https://backend.test")
            .await
            .0,
        200
    );

    // Garbage subject tokens.
    let (status, body) = exchange(&w, "bff", "not-a-jwt", "https://backend.test").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let _ = (frontend, backend);
}

/// ES384, which the TrustedIssuer schema offers: a P-384 key in the IdP's JWKS is used, not
/// skipped. Refused while the issuer does not allow ES384, accepted once a manifest edit
/// (picked up live) allows it.
#[tokio::test]
async fn an_es384_token_authenticates_once_the_issuer_allows_es384() {
    let idp = Idp::start().await;
    idp.add_es384_key();
    let w = start_with(idp).await;
    let agent = client_id_of(&w, "team", "agent");
    let rs256 = w
        .idp
        .mint(claims("system:serviceaccount:team:runner", "s2s", 600));
    eventually(Duration::from_secs(20), "the issuer's keys", || async {
        (federated(&w, &rs256).await.0 == 200).then_some(())
    })
    .await;

    let es384 = w
        .idp
        .mint_es384(claims("system:serviceaccount:team:runner", "s2s", 600));
    let (status, body) = federated(&w, &es384).await;
    assert_eq!(status, 401, "ES384 is not in the allowlist yet: {body}");
    assert_eq!(body["error"], "invalid_client");

    std::fs::write(
        w.manifests.path().join("issuer.yaml"),
        issuer_yaml_allowing(&w.idp.issuer(), &["RS256", "ES256", "ES384"]),
    )
    .unwrap();
    let (_, body) = eventually(Duration::from_secs(30), "ES384 allowed", || async {
        let r = federated(&w, &es384).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    let c = verify_access_token(
        body["access_token"].as_str().unwrap(),
        &jwks(&w.dev.issuer).await,
        &w.dev.issuer,
        "https://orders.test",
    );
    assert_eq!(c["sub"], agent.as_str());
}
