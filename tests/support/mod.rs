//! Test support: run `s2s-operator dev` as a real process on 127.0.0.1 with its own state
//! dir, read what it prints and the credentials it writes, and verify its tokens with a JWT
//! library other than the one the server uses.
#![allow(dead_code)]
pub mod apiserver;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_simple::prelude::*;
use serde_json::Value;

pub mod cluster;
pub mod idp;
pub mod rbac;
pub mod scenario;

/// A running `s2s-operator dev`.
pub struct DevServer {
    child: Child,
    /// The issuer URL it printed.
    pub issuer: String,
    /// Its state dir.
    pub state_dir: PathBuf,
    output: Arc<Mutex<String>>,
}

impl DevServer {
    /// Starts `dev` on a free loopback port over `manifests`, with `state_dir`.
    pub fn start(manifests: &Path, state_dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_log(manifests, state_dir, extra, "debug")
    }

    /// Like [`start`](Self::start), with `S2S_LOG` (the log filter) set to `log`.
    pub fn start_with_log(manifests: &Path, state_dir: &Path, extra: &[&str], log: &str) -> Self {
        Self::spawn(manifests, state_dir, "127.0.0.1:0", extra, log)
    }

    /// Like [`start`](Self::start), on a given address: a restart on the same one keeps the
    /// issuer URL, so tokens from before the restart are still the server's own.
    pub fn start_at(manifests: &Path, state_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        Self::spawn(manifests, state_dir, listen, extra, "debug")
    }

    fn spawn(manifests: &Path, state_dir: &Path, listen: &str, extra: &[&str], log: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
            .arg("dev")
            .arg("--manifests")
            .arg(manifests)
            .arg("--state-dir")
            .arg(state_dir)
            .args(["--listen", listen])
            .args(extra)
            .env("S2S_LOG", log)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dev starts");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let issuer = loop {
            let text = output.lock().unwrap().clone();
            if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("issuer:"))
                && text.contains("accounts:")
            {
                break line
                    .trim_start()
                    .trim_start_matches("issuer:")
                    .trim()
                    .to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dev exited with {status}:\n{text}");
            }
            assert!(Instant::now() < deadline, "dev did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            issuer,
            state_dir: state_dir.to_owned(),
            output,
        }
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until its output contains `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never printed {needle:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.issuer)
    }

    /// A Secret it wrote, as a mounted volume would show it.
    pub fn secret(&self, namespace: &str, name: &str) -> BTreeMap<String, String> {
        read_secret(&self.state_dir, namespace, name)
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Secret under a state dir.
pub fn read_secret(state_dir: &Path, namespace: &str, name: &str) -> BTreeMap<String, String> {
    let dir = state_dir.join(namespace).join(name);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Every file under a dir with its content, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    walk(dir, &mut out);
    out
}

/// An HTTP client for the tests (no redirects, short timeouts).
pub fn http() -> reqwest::Client {
    tls_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Makes aws-lc-rs the process's rustls provider: reqwest's rustls comes without one (the
/// crate's crypto is aws-lc-rs, and a second provider in the build would leave rustls without
/// a default).
pub fn tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The server's JWKS.
pub async fn jwks(issuer: &str) -> Value {
    http()
        .get(format!("{issuer}/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn b64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).unwrap()
}

/// Verifies an access token with jwt-simple (not the server's JWT library) against the
/// JWKS: signature, issuer, audience, expiry, and `typ: at+jwt`. Returns the claims.
pub fn verify_access_token(token: &str, jwks: &Value, issuer: &str, audience: &str) -> Value {
    let meta = Token::decode_metadata(token).expect("a JWT");
    assert_eq!(meta.signature_type(), Some("at+jwt"), "RFC 9068 typ");
    let kid = meta.key_id().expect("kid on every token");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("kid {kid} not in the JWKS"));
    let opts = VerificationOptions {
        allowed_issuers: Some(HashSet::from([issuer.to_owned()])),
        allowed_audiences: Some(HashSet::from([audience.to_owned()])),
        ..Default::default()
    };
    let s = |k: &str| jwk[k].as_str().unwrap();
    let claims: JWTClaims<Value> = match meta.algorithm() {
        "ES256" => {
            let mut point = vec![4u8];
            point.extend(b64(s("x")));
            point.extend(b64(s("y")));
            ES256PublicKey::from_bytes(&point)
                .unwrap()
                .verify_token(token, Some(opts))
        }
        "EdDSA" => Ed25519PublicKey::from_bytes(&b64(s("x")))
            .unwrap()
            .verify_token(token, Some(opts)),
        "RS256" => RS256PublicKey::from_components(&b64(s("n")), &b64(s("e")))
            .unwrap()
            .verify_token(token, Some(opts)),
        other => panic!("unexpected alg {other}"),
    }
    .unwrap_or_else(|e| panic!("token does not verify: {e}"));
    let mut v = serde_json::to_value(&claims.custom).unwrap();
    v["iss"] = Value::from(claims.issuer.clone());
    v["sub"] = Value::from(claims.subject.clone());
    v["jti"] = Value::from(claims.jwt_id.clone());
    v["exp"] = Value::from(claims.expires_at.map(|t| t.as_secs()));
    v["iat"] = Value::from(claims.issued_at.map(|t| t.as_secs()));
    v["nbf"] = Value::from(claims.invalid_before.map(|t| t.as_secs()));
    v["aud"] = match &claims.audiences {
        Some(Audiences::AsString(one)) => Value::from(one.clone()),
        Some(Audiences::AsSet(set)) => {
            // jwt-simple keeps a set: the token's order is not kept, so sort for comparisons.
            let mut list: Vec<&String> = set.iter().collect();
            list.sort();
            Value::from(list.into_iter().cloned().collect::<Vec<_>>())
        }
        None => Value::Null,
    };
    v
}

/// Writes manifest files into a fresh folder.
pub fn manifests_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Creates a namespace through the API.
pub async fn create_namespace(admin: &kube::Client, name: &str) {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(admin.clone());
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    api.create(&kube::api::PostParams::default(), &ns)
        .await
        .unwrap();
}
