//! `private_key.jwk` is a complete private JWK that a workload can sign with as it is: `dev`
//! runs as a process with a privateKeyJwt account per algorithm (ES256, EdDSA, RS256); a JOSE
//! library the server does not use (`jwt-compact`) imports the JWK from the Secret's files,
//! signs a `private_key_jwt` client assertion (RFC 7523 §2.2) with it, and the token server
//! accepts it over HTTP. The token is verified with another library again (jwt-simple, in
//! `support`). No private member may show up in the account's status or the served JWKS.

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jwt_compact::alg::{Ed25519, Es256, Rsa};
use jwt_compact::jwk::JsonWebKey;
use jwt_compact::prelude::*;
use jwt_compact::{Algorithm, AlgorithmExt};
use serde::Serialize;
use serde_json::Value;
use support::{DevServer, http, jwks, manifests_dir, verify_access_token};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const ORDERS: &str = "https://orders.test";

/// The members a private JWK of each key type must carry (RFC 7518 §6.2, §6.3; RFC 8037 §2),
/// besides `kid`, `alg` and `use`.
const EC_MEMBERS: &[&str] = &["crv", "d", "kty", "x", "y"];
const OKP_MEMBERS: &[&str] = &["crv", "d", "kty", "x"];
const RSA_MEMBERS: &[&str] = &["d", "dp", "dq", "e", "kty", "n", "p", "q", "qi"];
/// Every private member name of RFC 7518 §6.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

const WORLD: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api: {audience: "https://orders.test", scopes: [{name: "orders:read"}]}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: es, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {privateKeyJwt: {secretName: es-key, algorithm: ES256}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: ed, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {privateKeyJwt: {secretName: ed-key, algorithm: EdDSA}}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: rs, namespace: team}
spec:
  scopes: ["orders:read"]
  audiences: ["https://orders.test"]
  authentication: {privateKeyJwt: {secretName: rs-key, algorithm: RS256}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: es, namespace: shop}
spec:
  subject: {serviceAccount: {name: es, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: ed, namespace: shop}
spec:
  subject: {serviceAccount: {name: ed, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: rs, namespace: shop}
spec:
  subject: {serviceAccount: {name: rs, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
"#;

/// The claims of a client assertion (RFC 7523 §3), as plain members: jwt-compact's own time
/// claims would need chrono here for nothing.
#[derive(Serialize)]
struct Assertion<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A client assertion signed by jwt-compact with the key it imported from `jwk`.
fn sign<A: Algorithm>(
    alg: &A,
    jwk: &JsonWebKey<'_>,
    kid: &str,
    client_id: &str,
    aud: &str,
) -> String
where
    for<'k> A::SigningKey: TryFrom<&'k JsonWebKey<'k>>,
    for<'k> <A::SigningKey as TryFrom<&'k JsonWebKey<'k>>>::Error: std::fmt::Debug,
{
    let key = A::SigningKey::try_from(jwk).expect("jwt-compact imports private_key.jwk");
    let t = now();
    let claims = Claims::new(Assertion {
        iss: client_id,
        sub: client_id,
        aud,
        jti: format!("{client_id}-{t}"),
        iat: t,
        exp: t + 60,
    });
    alg.token(&Header::empty().with_key_id(kid), &claims, &key)
        .expect("jwt-compact signs")
}

/// The sorted member names of a JSON object.
fn members(v: &Value) -> Vec<String> {
    let mut m: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    m.sort_unstable();
    m
}

#[tokio::test]
async fn a_third_party_jose_library_signs_with_private_key_jwk_for_each_algorithm() {
    let manifests = manifests_dir(&[("world.yaml", WORLD)]);
    let state = tempfile::tempdir().unwrap();
    let dev = DevServer::start(manifests.path(), state.path(), &[]);
    let token_url = dev.token_url();
    let served = jwks(&dev.issuer).await;

    for (account, kty, required) in [
        ("es", "EC", EC_MEMBERS),
        ("ed", "OKP", OKP_MEMBERS),
        ("rs", "RSA", RSA_MEMBERS),
    ] {
        let creds = dev.secret("team", &format!("{account}-key"));
        let text = &creds["private_key.jwk"];
        let raw: Value = serde_json::from_str(text).unwrap();
        assert_eq!(raw["kty"], kty, "{account}");
        assert_eq!(raw["kid"], creds["key_id"].as_str(), "{account}");
        let mut expected: Vec<String> = required.iter().map(|m| m.to_string()).collect();
        expected.extend(["alg", "kid", "use"].map(String::from));
        expected.sort_unstable();
        assert_eq!(
            members(&raw),
            expected,
            "{account}: every member, nothing else"
        );

        let jwk: JsonWebKey<'_> = serde_json::from_str(text).unwrap();
        let client_id = &creds["client_id"];
        let kid = &creds["key_id"];
        let assertion = match kty {
            "EC" => sign(&Es256, &jwk, kid, client_id, &token_url),
            "OKP" => sign(&Ed25519, &jwk, kid, client_id, &token_url),
            _ => sign(&Rsa::rs256(), &jwk, kid, client_id, &token_url),
        };

        let resp = http()
            .post(&token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id.as_str()),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
                ("audience", ORDERS),
            ])
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 200, "{account}: {body}");
        let claims = verify_access_token(
            body["access_token"].as_str().unwrap(),
            &served,
            &dev.issuer,
            ORDERS,
        );
        assert_eq!(claims["client_id"], client_id.as_str(), "{account}");
        assert_eq!(claims["scope"], "orders:read", "{account}");

        // The public half in the status: the same key, without a single private member.
        let status_path = dev
            .state_dir
            .join(".s2s/status/serviceaccounts/team")
            .join(format!("{account}.json"));
        let status_text = std::fs::read_to_string(status_path).unwrap();
        for member in PRIVATE_MEMBERS {
            if let Some(secret) = raw[member].as_str() {
                assert!(
                    !status_text.contains(secret),
                    "{account}: the status shows `{member}`"
                );
            }
        }
        assert!(status_text.contains(raw["x"].as_str().or(raw["n"].as_str()).unwrap()));
    }

    // The JWKS publishes public members only.
    for key in served["keys"].as_array().unwrap() {
        for member in PRIVATE_MEMBERS {
            assert!(
                key.get(member).is_none(),
                "the JWKS shows `{member}`: {key}"
            );
        }
    }
}
