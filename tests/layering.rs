//! The module graph runs one way (STYLE.md, "A layout that shows the architecture"): the
//! token core and the crypto know no Kubernetes, and the Kubernetes glue under every kind
//! knows no kind. The compiler accepts a cycle or a stray `kube` import without a word, so
//! this test reads the sources and names the line that breaks a rule.
//!
//! It reads `use` paths, not types: a comment is skipped, and so is text in a string.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A line's code: no `//` comment, no string literal (a URL holds `//`, a message may say
/// `kube::`).
fn code_of(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push_str("\"\"");
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

/// A file's code, comments and strings removed, lines joined (a `use` may span lines).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(code_of)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every path named after `root::` in `code`, with `{…}` groups expanded:
/// `crate::{a::b, c::{d, e}}` gives `a::b`, `c::d`, `c::e`.
fn paths_after(code: &str, root: &str) -> Vec<String> {
    let prefix = format!("{root}::");
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(i) = code[from..].find(&prefix) {
        let at = from + i;
        from = at + prefix.len();
        // `crate::` itself, not the end of another identifier.
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        expand("", &code[from..], &mut out);
    }
    out
}

/// Expands the path that starts `rest` (after `prefix`), pushing each full path.
fn expand(prefix: &str, rest: &str, out: &mut Vec<String>) {
    let rest = rest.trim_start();
    if let Some(group) = rest.strip_prefix('{') {
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(prefix, &item, out);
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        expand(prefix, &item, out);
        return;
    }
    let ident: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        return;
    }
    let path = if prefix.is_empty() {
        ident.clone()
    } else {
        format!("{prefix}::{ident}")
    };
    let after = &rest[ident.len()..];
    match after.strip_prefix("::") {
        Some(more)
            if more.trim_start().starts_with('{') || more.starts_with(char::is_alphabetic) =>
        {
            expand(&path, more, out)
        }
        _ => out.push(path),
    }
}

/// Whether `code` names the crate `name` (`use name…`, `name::…`, `::name::…`).
fn names_crate(code: &str, name: &str) -> bool {
    let bytes = code.as_bytes();
    code.match_indices(name).any(|(at, _)| {
        let before_ok =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let after = &code[at + name.len()..];
        let after_ok = after.starts_with("::")
            || (code[..at].trim_end().ends_with("use")
                && !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
        before_ok && after_ok
    })
}

fn src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(rel)
}

/// `file: what` for each path in `files` that names a crate in `crates` or a `crate::` path
/// `allowed` rejects.
fn violations(files: &[PathBuf], crates: &[&str], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let code = code(file);
        let shown = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display();
        for name in crates {
            if names_crate(&code, name) {
                found.push(format!("{shown}: uses {name}"));
            }
        }
        for path in paths_after(&code, "crate") {
            if !allowed(&path) {
                found.push(format!("{shown}: uses crate::{path}"));
            }
        }
    }
    found
}

const KUBE_CRATES: &[&str] = &["kube", "k8s_openapi"];

/// The crate paths the token core may use: itself, the crypto, and the one file of
/// `trusted_issuer` that checks external JWTs against a snapshot (no I/O, no kube).
fn kube_free(path: &str) -> bool {
    let top = path.split("::").next().unwrap_or_default();
    matches!(top, "token" | "crypto")
        || path == "trusted_issuer::verify"
        || path.starts_with("trusted_issuer::verify::")
}

#[test]
fn the_token_core_and_crypto_import_no_kubernetes() {
    let mut files = rust_files(&src("token"));
    files.extend(rust_files(&src("crypto")));
    // Borrowed by the token core, so held to the same rule.
    files.push(src("trusted_issuer/verify.rs"));
    let found = violations(&files, KUBE_CRATES, kube_free);
    assert!(
        found.is_empty(),
        "kube reaches the token core:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_kubernetes_glue_imports_no_kind() {
    // `k8s` sits under every kind: it may use the types (`api`) and what has no kube at all.
    let found = violations(&rust_files(&src("k8s")), &[], |path| {
        let top = path.split("::").next().unwrap_or_default();
        matches!(top, "k8s" | "api" | "crypto" | "token")
    });
    assert!(
        found.is_empty(),
        "k8s imports above itself:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The scanner itself: a broken one would pass every file.
    let code = code_of(r#"use crate::{k8s::{self, Error}, token::deny}; // crate::dev"#);
    assert_eq!(
        paths_after(&code, "crate"),
        ["k8s::self", "k8s::Error", "token::deny"]
    );
    assert!(paths_after(&code_of(r#"let s = "crate::dev";"#), "crate").is_empty());
    assert!(names_crate("use kube::Api;", "kube"));
    assert!(names_crate("use kube;", "kube"));
    assert!(names_crate("let c: ::kube::Client;", "kube"));
    assert!(names_crate("k8s_openapi::ByteString", "k8s_openapi"));
    assert!(!names_crate("let kube = 1; fn kube_get()", "kube"));
    assert!(!names_crate(&code_of("// no `kube` here"), "kube"));
    assert!(kube_free("trusted_issuer::verify::Issuers"));
    assert!(!kube_free("trusted_issuer::cache"));
    assert!(!kube_free("revocation::DenyList"));
    // Before the move, the core named the deny list through `revocation`.
    let before = code_of("use crate::revocation::DenyList;");
    assert!(!paths_after(&before, "crate").iter().all(|p| kube_free(p)));
}
