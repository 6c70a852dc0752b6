//! The Helm chart, checked with real Helm: runs `tests/chart/check_chart.py`, which lints and
//! renders `charts/s2s-operator` for every documented combination of values and validates
//! what it renders against the Kubernetes schemas (see the script's docstring).
//!
//! Helm and the schemas come as Python packages (`helm-python-sdk`, `kubernetes-validate`).
//! `.ci/run` installs them into `target/ci-venv`; this test uses that venv, or the
//! interpreter named by `S2S_CHART_PYTHON`, or `python3`, and is skipped (saying so) when
//! none of them can import both, so `cargo test` needs no Python packages.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

const MODULES: &str = "import helm_python, kubernetes_validate";

#[test]
fn chart_lints_renders_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python: OsString = match std::env::var_os("S2S_CHART_PYTHON") {
        Some(p) => p,
        None => {
            let venv = root.join("target/ci-venv/bin/python");
            if venv.exists() {
                venv.into_os_string()
            } else {
                "python3".into()
            }
        }
    };
    let usable = Command::new(&python)
        .args(["-c", MODULES])
        .output()
        .is_ok_and(|o| o.status.success());
    if !usable {
        eprintln!(
            "skipped: {} cannot import helm_python and kubernetes_validate \
             (`bash .ci/run` installs them into target/ci-venv)",
            python.to_string_lossy()
        );
        return;
    }
    let out = Command::new(&python)
        .arg(root.join("tests/chart/check_chart.py"))
        .current_dir(root)
        .output()
        .expect("run tests/chart/check_chart.py");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the chart checks failed (output above)"
    );
}
