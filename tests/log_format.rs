//! Logs an operator can ship: the real binary, run as `dev` with its output redirected to
//! files as a container runtime or `dev > log 2>&1` would. With `--log-format json` (or
//! `S2S_LOG_FORMAT=json`) every line on stderr is a JSON object with `level`, `target` and
//! `fields`; with text and no terminal there is not one colour code.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{http, manifests_dir, read_secret};

const WORLD: &str = r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: orders, namespace: shop}
spec:
  api: {audience: "https://orders.test", scopes: [{name: "orders:read"}]}
---
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: team}
spec:
  audiences: ["https://orders.test"]
  authentication: {clientSecret: {secretName: worker-creds}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {name: worker, namespace: shop}
spec:
  subject: {serviceAccount: {name: worker, namespace: team}}
  audience: "https://orders.test"
  scopes: ["orders:read"]
"#;

/// What one run of `dev` wrote: stdout (the banner, for people) and stderr (the log).
struct Output {
    stdout: String,
    stderr: String,
}

/// Runs `dev` with stdout and stderr redirected to files, asks for a token, a wrong secret
/// and an introspection (so the log holds request lines with fields), then stops it.
async fn run_dev(args: &[&str], env: &[(&str, &str)]) -> Output {
    let manifests = manifests_dir(&[("world.yaml", WORLD)]);
    let state = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_s2s-operator"));
    cmd.arg("dev")
        .arg("--manifests")
        .arg(manifests.path())
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("S2S_LOG", "debug")
        // Set in a developer's shell, it would make the colour check pass for the wrong reason.
        .env_remove("NO_COLOR")
        .env_remove("S2S_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("dev starts");
    let issuer = wait_for_issuer(&out_path, &err_path, &mut child);

    let creds = read_secret(state.path(), "team", "worker-creds");
    let (id, secret) = (&creds["client_id"], &creds["client_secret"]);
    let got: Value = http()
        .post(format!("{issuer}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("audience", "https://orders.test"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = got["access_token"].as_str().expect("a token").to_owned();
    let refused = http()
        .post(format!("{issuer}/oauth2/token"))
        .basic_auth(id, Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let introspected = http()
        .post(format!("{issuer}/oauth2/introspect"))
        .basic_auth(id, Some(secret))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(introspected.status(), 200);

    let _ = child.kill();
    let _ = child.wait();
    let out = Output {
        stdout: std::fs::read_to_string(&out_path).unwrap(),
        stderr: std::fs::read_to_string(&err_path).unwrap(),
    };
    // Whatever the format, the credentials stay out of it.
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !text.contains(secret.as_str()),
            "a client secret in the output"
        );
        assert!(
            !text.contains(&token[..40]),
            "an access token in the output"
        );
    }
    out
}

/// The issuer `dev` printed in its banner, once it has listed its accounts.
fn wait_for_issuer(out: &Path, err: &Path, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.trim_start().starts_with("issuer:"))
            && text.contains("accounts:")
        {
            return line
                .trim_start()
                .trim_start_matches("issuer:")
                .trim()
                .to_owned();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "dev exited with {status}:\n{text}\n{}",
                std::fs::read_to_string(err).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "dev did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line of `log` as a JSON object with the fields a log shipper indexes.
fn assert_json_lines(log: &str) -> Vec<Value> {
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
            assert!(v["level"].is_string(), "no level: {line}");
            assert!(v["target"].is_string(), "no target: {line}");
            assert!(v["fields"].is_object(), "no fields: {line}");
            assert!(v["timestamp"].is_string(), "no timestamp: {line}");
            v
        })
        .collect();
    assert!(
        lines.len() >= 3,
        "too few log lines to prove anything:\n{log}"
    );
    lines
}

fn assert_no_colour(what: &str, text: &str) {
    assert!(
        !text.contains("\x1b["),
        "{what} holds ANSI escape sequences:\n{}",
        text.escape_debug()
    );
}

#[tokio::test]
async fn json_logs_are_one_object_a_line() {
    for (args, env) in [
        (&["--log-format", "json"][..], &[][..]),
        (&[][..], &[("S2S_LOG_FORMAT", "json")][..]),
    ] {
        let out = run_dev(args, env).await;
        let lines = assert_json_lines(&out.stderr);
        assert!(
            lines.iter().any(|l| l["fields"]["message"].is_string()
                && l["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("s2s_operator"))),
            "no line of ours with a message:\n{}",
            out.stderr
        );
        // The request lines keep their structured fields as JSON, not as text.
        assert!(
            lines.iter().any(|l| l["fields"]
                .as_object()
                .is_some_and(|f| f.keys().any(|k| k != "message"))),
            "no line carries a field besides its message:\n{}",
            out.stderr
        );
        assert_no_colour("the JSON log", &out.stderr);
        assert_no_colour("stdout", &out.stdout);
    }
}

#[tokio::test]
async fn text_logs_to_a_file_have_no_colour_codes() {
    for (args, env) in [
        (&[][..], &[][..]),
        (
            &["--log-format", "text"][..],
            &[("S2S_LOG_FORMAT", "json")][..],
        ),
    ] {
        let out = run_dev(args, env).await;
        assert!(
            out.stderr.lines().count() >= 3,
            "too few log lines to prove anything:\n{}",
            out.stderr
        );
        assert!(
            out.stderr.lines().all(|l| !l.starts_with('{')),
            "text was asked for (the flag wins over the environment):\n{}",
            out.stderr
        );
        assert_no_colour("the text log", &out.stderr);
        assert_no_colour("stdout", &out.stdout);
    }
}

#[test]
fn every_mode_takes_the_flag() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_s2s-operator"));
    // crdgen logs nothing, but takes the flag like every other mode (one chart setting, one
    // env var for every container).
    let out = Command::new(&bin)
        .args(["crdgen", "--log-format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("kind: CustomResourceDefinition"));
    for mode in ["controller", "token-server", "dev", "agent", "crdgen"] {
        let help = Command::new(&bin).args([mode, "--help"]).output().unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(text.contains("--log-format"), "{mode} --help:\n{text}");
    }
    let bad = Command::new(&bin)
        .args(["crdgen", "--log-format", "xml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn a_fatal_error_in_json_mode_is_a_json_line() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_s2s-operator"));
    // An address in use makes `dev` exit at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["--log-format", "json", "dev", "--listen"])
        .arg(taken.local_addr().unwrap().to_string())
        .arg("--state-dir")
        .arg(state.path())
        .arg("--manifests")
        .arg(state.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: Value =
        serde_json::from_str(stderr.trim()).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(line["level"], "ERROR");
    assert!(
        line["fields"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot listen")),
        "{stderr}"
    );
}
