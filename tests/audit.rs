//! The audit trail over real HTTP: `dev` on the shipped examples with `--audit-log FILE`, a
//! whole flow through a third-party OAuth client and plain form posts — issued, refused,
//! exchanged, introspected (active and inactive), revoked — and then every record read back
//! and checked field by field; no secret or token may be in the file.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::scenario::client_credentials;
use support::{DevServer, http};

const AUDIENCE: &str = "https://orders.example.com";

async fn post(url: &str, basic: (&str, &str), form: &[(&str, &str)]) -> (u16, Value) {
    let r = http()
        .post(url)
        .basic_auth(basic.0, Some(basic.1))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn records(path: &Path, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn every_request_of_a_flow_leaves_one_record_with_no_secret_in_it() {
    let state = tempfile::tempdir().unwrap();
    let audit = state.path().join("audit.jsonl");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let dev = DevServer::start(
        &examples,
        &state.path().join("state"),
        &["--audit-log", audit.to_str().unwrap()],
    );
    let creds = dev.secret("billing", "billing-worker-credentials");
    let (id, secret) = (creds["client_id"].as_str(), creds["client_secret"].as_str());
    let token_url = dev.token_url();

    // 1. issued (the oauth2 crate, client_secret_basic)
    let token = client_credentials(&token_url, id, secret, AUDIENCE, "orders:read")
        .await
        .unwrap();
    // 2. refused: a wrong secret, a scope nobody granted
    let (s, _) = post(
        &token_url,
        (id, "not-the-secret"),
        &[("grant_type", "client_credentials"), ("audience", AUDIENCE)],
    )
    .await;
    assert_eq!(s, 401);
    let (s, _) = post(
        &token_url,
        (id, secret),
        &[
            ("grant_type", "client_credentials"),
            ("audience", AUDIENCE),
            ("scope", "orders:delete"),
        ],
    )
    .await;
    assert_eq!(s, 400);
    // 3. exchanged: its own token, narrowed (impersonation, RFC 8693)
    let (s, exchanged) = post(
        &token_url,
        (id, secret),
        &[
            (
                "grant_type",
                "urn:ietf:params:oauth:grant-type:token-exchange",
            ),
            ("subject_token", &token),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("audience", AUDIENCE),
            ("scope", "orders:read"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{exchanged}");
    // 4. introspected: active, then a token that is none of ours
    let introspect = format!("{}/oauth2/introspect", dev.issuer);
    let (s, v) = post(&introspect, (id, secret), &[("token", &token)]).await;
    assert_eq!((s, v["active"].clone()), (200, Value::Bool(true)));
    let (s, v) = post(
        &introspect,
        (id, secret),
        &[("token", "eyJhbGciOiJub25lIn0.e30.")],
    )
    .await;
    assert_eq!((s, v["active"].clone()), (200, Value::Bool(false)));
    // 5. revoked
    let (s, _) = post(
        &format!("{}/oauth2/revoke", dev.issuer),
        (id, secret),
        &[("token", &token)],
    )
    .await;
    assert_eq!(s, 200);

    let recs = records(&audit, 7);
    assert_eq!(recs.len(), 7, "{recs:#?}");
    let claims = support::verify_access_token(
        &token,
        &support::jwks(&dev.issuer).await,
        &dev.issuer,
        AUDIENCE,
    );
    let jti = claims["jti"].as_str().unwrap();
    for r in &recs {
        assert!(r["time"].as_str().unwrap().ends_with('Z'), "{r}");
        assert_eq!(r["source"], "127.0.0.1", "{r}");
        assert_eq!(r["client_id"], id, "{r}");
    }
    let (issued, bad_secret, bad_scope, exch, active, inactive, revoked) = (
        &recs[0], &recs[1], &recs[2], &recs[3], &recs[4], &recs[5], &recs[6],
    );
    assert_eq!(issued["endpoint"], "token");
    assert_eq!(issued["outcome"], "issued");
    assert_eq!(issued["grant_type"], "client_credentials");
    assert_eq!(issued["subject"], claims["sub"]);
    assert_eq!(issued["audiences"], serde_json::json!([AUDIENCE]));
    assert_eq!(issued["scopes"], serde_json::json!(["orders:read"]));
    assert_eq!(issued["jti"], jti);
    assert_eq!(issued["exp"], claims["exp"]);
    assert_eq!(issued["grants"], claims["grants"]);
    assert!(issued.get("error").is_none());
    assert_eq!(
        (bad_secret["outcome"].as_str(), bad_secret["error"].as_str()),
        (Some("refused"), Some("invalid_client"))
    );
    assert_eq!(
        (bad_scope["outcome"].as_str(), bad_scope["error"].as_str()),
        (Some("refused"), Some("invalid_scope"))
    );
    assert_eq!(
        bad_scope["scopes"],
        serde_json::json!(["orders:delete"]),
        "what was asked"
    );
    assert_eq!(bad_scope["audiences"], serde_json::json!([AUDIENCE]));
    assert!(bad_scope.get("jti").is_none());
    assert_eq!(exch["outcome"], "exchanged");
    assert_eq!(exch["grant_type"], "token_exchange");
    assert_ne!(exch["jti"], jti, "a new token");
    assert!(exch.get("act").is_none(), "impersonation: no actor");
    assert_eq!(
        (active["endpoint"].as_str(), active["outcome"].as_str()),
        (Some("introspect"), Some("active"))
    );
    assert_eq!(active["jti"], jti);
    assert_eq!(inactive["outcome"], "inactive");
    assert!(inactive.get("jti").is_none());
    assert_eq!(
        (revoked["endpoint"].as_str(), revoked["outcome"].as_str()),
        (Some("revoke"), Some("revoked"))
    );
    assert_eq!(revoked["jti"], jti);

    let text = std::fs::read_to_string(&audit).unwrap();
    for (what, needle) in [
        ("the client secret", secret),
        ("the wrong secret", "not-the-secret"),
        ("the token", token.as_str()),
        (
            "the exchanged token",
            exchanged["access_token"].as_str().unwrap(),
        ),
    ] {
        assert!(!text.contains(needle), "{what} is in the audit trail");
    }
    // A token's signature part alone must not be there either.
    assert!(!text.contains(token.rsplit('.').next().unwrap()));
}
