//! Secrets never reach a log line: `dev` runs as a process with `S2S_LOG=trace` through the
//! whole flow — client_secret_basic and private_key_jwt, a rotation, token exchange with
//! delegation, introspection, revocation, a multi-tenant request, and many refused requests
//! (wrong secret, bad assertions, an oversized body, repeated parameters) — and then nothing
//! secret may appear in what it printed (stdout and stderr, event lines included) or in the
//! status files it keeps under `STATE_DIR/.s2s/status/`: no client secret (old or new), no
//! private key (PEM or a private JWK member: `d`, and for RSA `p`, `q`, `dp`, `dq`, `qi`), no
//! client assertion, no access token, nor a telling piece of one.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jwt_simple::prelude::*;
use serde_json::Value;
use support::{DevServer, manifests_dir};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

fn world(rotate: &str) -> String {
    format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: orders, namespace: shop}}
spec:
  api: {{audience: "https://orders.test", scopes: [{{name: "orders:read"}}]}}
  authentication: {{clientSecret: {{secretName: orders-creds}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata:
  name: worker
  namespace: team
  annotations: {{s2s.dev/rotate: "{rotate}"}}
spec:
  scopes: ["orders:*", "kpi:*"]
  audiences: ["https://orders.test", "https://bff.test", "https://data.test/a", "https://data.test/b"]
  authentication: {{clientSecret: {{secretName: worker-creds, gracePeriod: 1h}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: signer, namespace: team}}
spec:
  audiences: ["https://orders.test"]
  authentication: {{privateKeyJwt: {{secretName: signer-key, algorithm: ES256}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: rsigner, namespace: team}}
spec:
  audiences: ["https://orders.test"]
  authentication: {{privateKeyJwt: {{secretName: rsigner-key, algorithm: RS256}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: bff, namespace: front}}
spec:
  api: {{audience: "https://bff.test"}}
  audiences: ["https://orders.test"]
  authentication: {{clientSecret: {{secretName: bff-creds}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: signer, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: signer, namespace: team}}}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker-to-bff, namespace: front}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "https://bff.test"
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: bff-for-anyone, namespace: shop}}
spec:
  subject: {{serviceAccount: {{name: bff, namespace: front}}}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
  delegation: {{}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: data, namespace: tenant-a}}
spec: {{api: {{audience: "https://data.test/a", scopes: [{{name: "kpi:read"}}]}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: tenant-a}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "https://data.test/a"
  tenant: a
  scopes: ["kpi:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: data, namespace: tenant-b}}
spec: {{api: {{audience: "https://data.test/b", scopes: [{{name: "kpi:read"}}]}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: worker, namespace: tenant-b}}
spec:
  subject: {{serviceAccount: {{name: worker, namespace: team}}}}
  audience: "https://data.test/b"
  tenant: b
  scopes: ["kpi:read"]
"#
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Everything secret the test saw: the whole value and, for tokens and assertions, their
/// first 20 characters too.
#[derive(Default)]
struct Secrets {
    values: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(!value.is_empty(), "{what} is empty");
        self.values.push((what.to_owned(), value.to_owned()));
    }

    fn add_token(&mut self, what: &str, value: &str) {
        self.add(what, value);
        self.add(&format!("{what} (first 20 characters)"), &value[..20]);
        // The signature and the claims alone are as telling.
        for (i, part) in value.split('.').enumerate().skip(1) {
            if part.len() >= 20 {
                self.add(&format!("{what} (part {i})"), part);
            }
        }
    }

    /// The response's `access_token`, noted as a secret.
    fn token_of(&mut self, what: &str, body: &Value) -> String {
        let t = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no token in {body}"))
            .to_owned();
        self.add_token(what, &t);
        t
    }
}

struct Client {
    url: String,
    http: reqwest::Client,
}

impl Client {
    async fn post(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.post_raw(path, basic, body).await
    }

    async fn post_raw(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        body: String,
    ) -> (u16, Value) {
        self.try_post_raw(path, basic, body).await.unwrap()
    }

    async fn try_post_raw(
        &self,
        path: &str,
        basic: Option<(&str, &str)>,
        body: String,
    ) -> reqwest::Result<(u16, Value)> {
        let mut req = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

fn assertion(key: &ES256KeyPair, client_id: &str, aud: &str, ttl: u64, jti: &str) -> String {
    let claims = Claims::create(jwt_simple::prelude::Duration::from_secs(ttl))
        .with_issuer(client_id)
        .with_subject(client_id)
        .with_audience(aud)
        .with_jwt_id(jti);
    key.sign(claims).unwrap()
}

fn pairs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Every file under `dir` with its text.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[tokio::test]
async fn no_secret_reaches_the_logs_or_the_statuses() {
    let manifests = manifests_dir(&[("world.yaml", &world("1"))]);
    let state = tempfile::tempdir().unwrap();
    let dev = DevServer::start_with_log(
        manifests.path(),
        state.path(),
        // The audit trail among the log lines, so the same scan covers it.
        &["--audit-log", "stderr"],
        "trace",
    );
    let c = Client {
        url: dev.issuer.clone(),
        // A fresh connection per request: after the oversized-body case the server closes
        // its connection, and a pooled one reused at that moment fails with
        // IncompleteMessage (seen once in CI); this test is about logs, not keep-alive.
        http: {
            support::tls_provider();
            reqwest::Client::builder()
        }
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap(),
    };
    let token_path = "/oauth2/token";
    let mut s = Secrets::default();

    let worker = dev.secret("team", "worker-creds");
    let (worker_id, old_secret) = (worker["client_id"].clone(), worker["client_secret"].clone());
    s.add("worker's first client secret", &old_secret);
    let bff = dev.secret("front", "bff-creds");
    s.add("bff's client secret", &bff["client_secret"]);
    let orders = dev.secret("shop", "orders-creds");
    s.add("orders' client secret", &orders["client_secret"]);
    let signer = dev.secret("team", "signer-key");
    let pem = &signer["private_key.pem"];
    s.add("signer's private key PEM", pem);
    let jwk: Value = serde_json::from_str(&signer["private_key.jwk"]).unwrap();
    s.add("signer's private JWK d", jwk["d"].as_str().unwrap());
    // An RSA private JWK carries the whole key: none of its private members may leak.
    let rsigner = dev.secret("team", "rsigner-key");
    s.add("rsigner's private key PEM", &rsigner["private_key.pem"]);
    let rsa_jwk: Value = serde_json::from_str(&rsigner["private_key.jwk"]).unwrap();
    for member in ["d", "p", "q", "dp", "dq", "qi"] {
        let value = rsa_jwk[member]
            .as_str()
            .unwrap_or_else(|| panic!("no `{member}`"));
        s.add(&format!("rsigner's private JWK {member}"), value);
    }
    let signer_id = signer["client_id"].clone();
    let signer_key = ES256KeyPair::from_pem(pem)
        .unwrap()
        .with_key_id(&signer["key_id"]);
    let worker_basic = Some((worker_id.as_str(), old_secret.as_str()));
    let orders_basic = Some((
        orders["client_id"].as_str(),
        orders["client_secret"].as_str(),
    ));

    // client_secret_basic and client_secret_post.
    let (status, body) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("audience", "https://orders.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let worker_token = s.token_of("worker's token (basic)", &body);
    let (status, body) = c
        .post(
            token_path,
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &worker_id),
                ("client_secret", &old_secret),
                ("audience", "https://orders.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.token_of("worker's token (post)", &body);

    // private_key_jwt, then the same assertion again (a replay), expired, wrong audience,
    // signed by a stranger.
    let good = assertion(
        &signer_key,
        &signer_id,
        &dev.token_url(),
        60,
        &format!("jti-{}", now()),
    );
    s.add_token("a client assertion", &good);
    let form = |a: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", signer_id.clone()),
            ("client_assertion_type", ASSERTION_TYPE.to_owned()),
            ("client_assertion", a.to_owned()),
            ("audience", "https://orders.test".to_owned()),
        ]
    };
    let (status, body) = c.post(token_path, None, &pairs(&form(&good))).await;
    assert_eq!(status, 200, "{body}");
    s.token_of("signer's token", &body);
    let (status, _) = c.post(token_path, None, &pairs(&form(&good))).await;
    assert_eq!(status, 401, "a replayed assertion is refused");
    let too_long = assertion(&signer_key, &signer_id, &dev.token_url(), 3600, "long");
    s.add_token("a too-long-lived assertion", &too_long);
    assert_eq!(
        c.post(token_path, None, &pairs(&form(&too_long))).await.0,
        401
    );
    let wrong_aud = assertion(&signer_key, &signer_id, "https://elsewhere.test", 60, "aud");
    s.add_token("an assertion for another audience", &wrong_aud);
    assert_eq!(
        c.post(token_path, None, &pairs(&form(&wrong_aud))).await.0,
        401
    );
    let stranger = ES256KeyPair::generate().with_key_id(&signer["key_id"]);
    let forged = assertion(&stranger, &signer_id, &dev.token_url(), 60, "forged");
    s.add_token("a forged assertion", &forged);
    assert_eq!(
        c.post(token_path, None, &pairs(&form(&forged))).await.0,
        401
    );
    let garbage = format!("{}.garbage", &good[..good.len() - 10]);
    assert_eq!(
        c.post(token_path, None, &pairs(&form(&garbage))).await.0,
        401
    );

    // Wrong secrets, by every method, and for an unknown client.
    let wrong = format!("{old_secret}x");
    s.add("a wrong secret", &wrong);
    let cc = [
        ("grant_type", "client_credentials"),
        ("audience", "https://orders.test"),
    ];
    assert_eq!(
        c.post(token_path, Some((&worker_id, &wrong)), &cc).await.0,
        401
    );
    assert_eq!(
        c.post(token_path, Some(("no-such-client", &old_secret)), &cc)
            .await
            .0,
        401
    );
    let (status, _) = c
        .post(
            token_path,
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &worker_id),
                ("client_secret", &wrong),
            ],
        )
        .await;
    assert_eq!(status, 401);
    // Two methods at once, a repeated secret, an oversized body, a broken body, an unknown
    // grant type, a scope nobody granted: all refused, none may echo a secret into the logs.
    let (status, _) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", &worker_id),
                ("client_secret", &old_secret),
            ],
        )
        .await;
    assert_eq!(status, 400);
    let repeated = format!(
        "grant_type=client_credentials&client_id={worker_id}&client_secret={old_secret}&client_secret={old_secret}"
    );
    assert_eq!(c.post_raw(token_path, None, repeated).await.0, 400);
    let oversized = format!(
        "grant_type=client_credentials&client_secret={old_secret}&client_id={worker_id}&pad={}",
        "a".repeat(64 * 1024)
    );
    // The server may answer 413 and close the connection while the client is still writing
    // the body (a broken pipe, under load): that is a refusal too.
    match c.try_post_raw(token_path, None, oversized).await {
        Ok((status, _)) => assert!(status == 413 || status == 400, "oversized: {status}"),
        Err(e) => assert!(e.is_request(), "oversized: {e}"),
    }
    let broken = format!("client_secret={old_secret}&%zz&=x&client_id={worker_id}");
    assert_eq!(c.post_raw(token_path, None, broken).await.0, 400);
    let (status, _) = c
        .post(token_path, worker_basic, &[("grant_type", "password")])
        .await;
    assert_eq!(status, 400);
    let (status, _) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("scope", "orders:admin"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = c
        .post(
            token_path,
            None,
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion", &good),
            ],
        )
        .await;
    assert_eq!(status, 400, "an assertion without its type");

    // Token exchange with delegation: bff acts for worker at orders.
    let (status, body) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("audience", "https://bff.test"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let for_bff = s.token_of("worker's token for bff", &body);
    let bff_basic = Some((bff["client_id"].as_str(), bff["client_secret"].as_str()));
    let exchange = |subject: String| {
        vec![
            ("grant_type", TOKEN_EXCHANGE.to_owned()),
            ("subject_token", subject),
            ("subject_token_type", ACCESS_TOKEN.to_owned()),
            ("audience", "https://orders.test".to_owned()),
        ]
    };
    let (status, body) = c
        .post(token_path, bff_basic, &pairs(&exchange(for_bff.clone())))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN);
    s.token_of("the exchanged token", &body);
    let (status, _) = c
        .post(
            token_path,
            bff_basic,
            &pairs(&exchange(format!("{for_bff}x"))),
        )
        .await;
    assert_eq!(status, 400, "a broken subject token");
    let (status, _) = c
        .post(token_path, bff_basic, &pairs(&exchange(good.clone())))
        .await;
    assert_eq!(status, 400, "an assertion as subject token");

    // Multi-tenant: one token per tenant.
    let (status, body) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("tenant", "a"),
                ("tenant", "b"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for t in body["tokens"].as_array().unwrap() {
        s.token_of("a tenant token", t);
    }
    let (status, _) = c
        .post(
            token_path,
            worker_basic,
            &[
                ("grant_type", "client_credentials"),
                ("tenant", "a"),
                ("tenant", "nope"),
            ],
        )
        .await;
    assert_eq!(status, 400);

    // Introspection (by the client and by the API's account) and revocation.
    let (status, body) = c
        .post(
            "/oauth2/introspect",
            worker_basic,
            &[("token", &worker_token)],
        )
        .await;
    assert_eq!((status, &body["active"]), (200, &Value::Bool(true)));
    let (status, body) = c
        .post(
            "/oauth2/introspect",
            orders_basic,
            &[("token", &worker_token)],
        )
        .await;
    assert_eq!((status, &body["active"]), (200, &Value::Bool(true)));
    let (status, _) = c
        .post(
            "/oauth2/introspect",
            Some((&worker_id, &wrong)),
            &[("token", &worker_token)],
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = c
        .post("/oauth2/revoke", worker_basic, &[("token", &worker_token)])
        .await;
    assert_eq!(status, 200);
    let (status, body) = c
        .post(
            "/oauth2/introspect",
            worker_basic,
            &[("token", &worker_token)],
        )
        .await;
    assert_eq!((status, &body["active"]), (200, &Value::Bool(false)));

    // Rotate the worker's secret: the new one works, the old one too during the grace period.
    std::fs::write(manifests.path().join("world.yaml"), world("2")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let new_secret = loop {
        let now_secret = dev.secret("team", "worker-creds")["client_secret"].clone();
        if now_secret != old_secret {
            break now_secret;
        }
        assert!(std::time::Instant::now() < deadline, "never rotated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.add("worker's rotated client secret", &new_secret);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = c
            .post(token_path, Some((&worker_id, &new_secret)), &cc)
            .await;
        if status == 200 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    s.token_of("worker's token after the rotation", &body);
    let (status, body) = c.post(token_path, worker_basic, &cc).await;
    assert_eq!(status, 200, "the old secret in its grace period: {body}");
    s.token_of("worker's token with the old secret", &body);
    let (status, body) = c
        .post(token_path, worker_basic, &[("grant_type", "x")])
        .await;
    assert_eq!(status, 400, "{body}");
    // Give dev a moment to flush what it prints.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Nothing secret in what dev printed, nor in its status files.
    let logs = dev.logs();
    for outcome in ["issued", "refused", "exchanged", "revoked"] {
        assert!(
            logs.contains(&format!("\"outcome\":\"{outcome}\"")),
            "the audit trail has {outcome} records to scan"
        );
    }
    let mut places = vec![("dev's stdout and stderr".to_owned(), logs)];
    places.extend(files_under(&state.path().join(".s2s/status")));
    assert!(places.len() > 1, "status files exist");
    // Nothing of ours logs at TRACE; DEBUG lines (refused requests) show the filter is open.
    assert!(
        places[0].1.contains("DEBUG") && places[0].1.contains("token request refused"),
        "verbose logging is on:\n{}",
        places[0].1
    );
    // The search sees through the colours: an id that is no secret is found.
    assert!(places[0].1.contains(&worker_id), "client ids are logged");
    let mut leaks = vec![];
    for (place, text) in &places {
        for (what, value) in &s.values {
            if text.contains(value.as_str()) {
                leaks.push(format!("{what} in {place}"));
            }
        }
        for needle in ["BEGIN PRIVATE KEY", "\"d\":", "client_secret=", "Basic "] {
            if text.contains(needle) {
                leaks.push(format!("{needle:?} in {place}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secrets leaked:\n{}\n--- dev's output ---\n{}",
        leaks.join("\n"),
        places[0].1
    );
}
