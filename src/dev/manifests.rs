//! Reading the four kinds from YAML files and folders, the way `kubectl apply -f` would:
//! every document of `s2s.dev/v1alpha1`, other documents passed over, a broken document
//! reported and skipped without stopping the rest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde_json::Value;

use crate::api::{self, AccessToken, ServiceAccount, TokenGrant, TrustedIssuer};

/// The namespace of objects that name none, as `kubectl` does.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Everything found in the manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// ServiceAccounts.
    pub accounts: Vec<ServiceAccount>,
    /// TrustedIssuers.
    pub issuers: Vec<TrustedIssuer>,
    /// TokenGrants.
    pub grants: Vec<TokenGrant>,
    /// AccessTokens.
    pub access_tokens: Vec<AccessToken>,
    /// What could not be read, one line each.
    pub errors: Vec<String>,
    /// Changes when any file changes.
    pub fingerprint: String,
}

/// The YAML files under the given paths, sorted.
fn files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() {
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    walk(&e.path(), out);
                }
            }
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p.to_owned());
        }
    }
    let mut out = vec![];
    for p in paths {
        walk(p, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// A cheap summary (names, sizes, modification times) that changes when a file does.
pub fn fingerprint(paths: &[PathBuf]) -> String {
    let mut s = String::new();
    for f in files(paths) {
        let meta = std::fs::metadata(&f).ok();
        let modified = meta.as_ref().and_then(|m| m.modified().ok());
        s.push_str(&format!(
            "{}|{:?}|{:?}\n",
            f.display(),
            meta.map(|m| m.len()),
            modified
        ));
    }
    s
}

/// Loads every object from the paths.
pub fn load(paths: &[PathBuf]) -> Manifests {
    let mut m = Manifests {
        fingerprint: fingerprint(paths),
        ..Default::default()
    };
    for p in paths {
        if !p.exists() {
            m.errors
                .push(format!("{}: no such file or folder", p.display()));
        }
    }
    let mut seen = BTreeSet::new();
    for file in files(paths) {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                m.errors.push(format!("{}: {e}", file.display()));
                continue;
            }
        };
        parse_documents(&mut m, &mut seen, &file.display().to_string(), &text);
    }
    m
}

/// Reads one YAML text (a stream of documents) the way [`load`] reads a file: no I/O, so the
/// fuzz targets and tests can feed it anything.
pub fn parse_text(text: &str) -> Manifests {
    let mut m = Manifests::default();
    parse_documents(&mut m, &mut BTreeSet::new(), "<input>", text);
    m
}

/// Adds every object of one YAML stream to `m`; `source` names it in error lines.
fn parse_documents(m: &mut Manifests, seen: &mut BTreeSet<String>, source: &str, text: &str) {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{source} (document {})", i + 1);
        let value: Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                m.errors.push(format!("{at}: not YAML: {e}"));
                break; // the rest of the stream cannot be trusted
            }
        };
        if value.is_null() || value["apiVersion"] != api::API_VERSION {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let result = match kind.as_str() {
            "ServiceAccount" => {
                parse(value).map(|o: ServiceAccount| push(&mut m.accounts, o, &kind, seen))
            }
            "TrustedIssuer" => {
                parse(value).map(|o: TrustedIssuer| push(&mut m.issuers, o, &kind, seen))
            }
            "TokenGrant" => parse(value).map(|o: TokenGrant| push(&mut m.grants, o, &kind, seen)),
            "AccessToken" => {
                parse(value).map(|o: AccessToken| push(&mut m.access_tokens, o, &kind, seen))
            }
            other => Err(format!("unknown kind {other:?}")),
        };
        match result {
            Ok(None) => {}
            Ok(Some(dup)) => m.errors.push(format!(
                "{at}: {kind} {dup} is defined twice; the first one is kept"
            )),
            Err(e) => m.errors.push(format!("{at}: {e}")),
        }
    }
}

fn parse<K: serde::de::DeserializeOwned + ResourceExt>(value: Value) -> Result<K, String> {
    let mut obj: K = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if obj.meta().name.as_deref().unwrap_or_default().is_empty() {
        return Err("metadata.name is required".into());
    }
    if obj.meta().namespace.is_none() {
        obj.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    // What the API server would fill in.
    obj.meta_mut().generation.get_or_insert(1);
    Ok(obj)
}

/// Adds an object unless one of the same kind, namespace and name exists; returns the
/// duplicate's key if so.
fn push<K: ResourceExt>(
    list: &mut Vec<K>,
    obj: K,
    kind: &str,
    seen: &mut BTreeSet<String>,
) -> Option<String> {
    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
    if !seen.insert(format!("{kind}/{key}")) {
        return Some(key);
    }
    list.push(obj);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_the_examples_and_reports_broken_documents() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let m = load(&[root.join("examples")]);
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        assert!(m.accounts.len() >= 4 && m.issuers.len() >= 4 && m.grants.len() >= 4);

        let dir = std::env::temp_dir().join(format!("s2s-manifests-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a.yaml"),
            "apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: a}\nspec: {api: {audience: x}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: b}\nspec: {tokenLifetime: forever}\n",
        )
        .unwrap();
        let m = load(std::slice::from_ref(&dir));
        assert_eq!(m.accounts.len(), 1);
        assert_eq!(m.accounts[0].namespace().as_deref(), Some("default"));
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        let before = fingerprint(std::slice::from_ref(&dir));
        std::fs::write(dir.join("b.yaml"), "{}\n").unwrap();
        assert_ne!(fingerprint(std::slice::from_ref(&dir)), before);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
