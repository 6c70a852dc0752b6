//! The CRDs, checked offline because CI has no API server:
//! * `crds/` and the chart's `crds/` equal what `crdgen` prints;
//! * every schema is structural (what a real kube-apiserver demands of a CRD);
//! * every example in `examples/` parses into the Rust types and passes the schema and every
//!   CEL rule;
//! * every CEL rule refuses at least one object, with its own message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::Validator;
use s2s_operator::api::{self, AccessToken, ServiceAccount, TokenGrant, TrustedIssuer};
use serde_json::{Value, json};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn crd_for(kind: &str) -> CustomResourceDefinition {
    api::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"))
}

fn schema_for(kind: &str) -> Value {
    let crd = crd_for(kind);
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Generated files

#[test]
fn crds_folder_equals_crdgen() {
    for dir in [root().join("crds"), root().join("charts/s2s-operator/crds")] {
        for crd in api::crds() {
            let path = dir.join(api::crd_file_name(&crd));
            let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run `cargo run -- crdgen --output-dir {}`",
                    path.display(),
                    dir.display()
                )
            });
            assert!(
                on_disk == api::crd_yaml(&crd),
                "{} differs from crdgen; run `cargo run -- crdgen --output-dir {}`",
                path.display(),
                dir.display()
            );
        }
        let files = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(files, 4, "{} holds exactly the four CRDs", dir.display());
    }
}

/// kubectl and Helm read YAML 1.1, where a bare `y`, `n`, `yes`, `no`, `on`, `off` (any
/// capitalisation) is a boolean: the JWK members `y` and `n` of our CRDs once reached the
/// apiserver as `true` and `false`. No key or value in a file we ship may be such a bare
/// word. Block scalars (descriptions) and comments are text, not YAML scalars.
#[test]
fn no_shipped_yaml_has_a_yaml_1_1_boolean_bare_word() {
    let word = r"(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF)";
    let patterns = [
        // a key: `y:`, `- n:`
        format!(r"^\s*(?:-\s+)*{word}:(?:\s|$)"),
        // a value: `key: yes`, `- no`
        format!(r"^\s*(?:-\s+)*(?:[^#:]+:\s+)?{word}\s*(?:#.*)?$"),
        // in a flow collection: `{y: 1}`, `[on, off]`
        format!(r"[{{\[,]\s*{word}\s*[:,\]}}]"),
    ];
    let patterns: Vec<regex::Regex> = patterns
        .iter()
        .map(|p| regex::Regex::new(p).unwrap())
        .collect();
    let block_start = regex::Regex::new(r"(?:^|\s)[|>][-+1-9]*\s*$").unwrap();
    let mut files = vec![];
    for dir in ["crds", "charts", "examples"] {
        collect_yaml(&root().join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found the shipped YAML ({} files)",
        files.len()
    );
    let mut found = vec![];
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let mut block: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let indent = line.len() - line.trim_start().len();
            if let Some(open) = block {
                if line.trim().is_empty() || indent > open {
                    continue;
                }
                block = None;
            }
            let code = line.trim_start();
            if code.starts_with('#') || code.starts_with("{{") {
                continue;
            }
            if patterns.iter().any(|p| p.is_match(line)) {
                found.push(format!("{}:{}: {line}", file.display(), n + 1));
            }
            if block_start.is_match(line) {
                block = Some(indent);
            }
        }
    }
    assert!(
        found.is_empty(),
        "YAML 1.1 reads these bare words as booleans; quote them:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_yaml_1_1_check_reads_crdgen_output_before_quoting_as_broken() {
    // What serde_yaml alone writes for a JWK schema: the bug this guards against.
    let plain = serde_yaml::to_string(&json!({"properties": {"y": {"type": "string"}}})).unwrap();
    assert!(plain.contains("\n  y:"), "{plain}");
    let quoted = api::yaml::to_string(&json!({"properties": {"y": {"type": "string"}}}));
    assert!(quoted.contains("\n  \"y\":"), "{quoted}");
}

#[test]
fn crdgen_prints_every_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_s2s-operator"))
        .arg("crdgen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let expected: Vec<String> = api::crds().iter().map(api::crd_yaml).collect();
    assert_eq!(printed, expected.join("---\n"));
    let docs: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&printed)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    let names: Vec<_> = docs
        .iter()
        .map(|c| c.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "serviceaccounts.s2s.dev",
            "trustedissuers.s2s.dev",
            "tokengrants.s2s.dev",
            "accesstokens.s2s.dev"
        ]
    );
}

#[test]
fn names_follow_the_design() {
    let expect = [
        ("ServiceAccount", "s2ssa", "Client ID"),
        ("TrustedIssuer", "tiss", "Issuer"),
        ("TokenGrant", "tgrant", "Audience"),
        ("AccessToken", "s2stoken", "Audiences"),
    ];
    for (kind, short, column) in expect {
        let crd = crd_for(kind);
        assert_eq!(crd.spec.group, "s2s.dev");
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["s2s".to_owned()][..])
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.served && v.storage);
        assert!(
            v.subresources.as_ref().unwrap().status.is_some(),
            "{kind} has a status subresource"
        );
        let columns: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns.first(), Some(&"Ready"), "{kind}: Ready comes first");
        assert!(columns.contains(&column), "{kind} shows {column}");
        assert_eq!(columns.last(), Some(&"Age"), "{kind}: Age comes last");
    }
}

// ---------------------------------------------------------------------------------------------
// Structural schemas

/// Walks a schema and collects everything a kube-apiserver refuses in a structural schema
/// (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#specifying-a-structural-schema)
/// or in its CEL rules' declarations.
fn structural_problems(node: &Value, path: &str, problems: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        problems.push(format!("{path}: schema is not an object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$defs",
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "$schema",
    ] {
        if obj.contains_key(forbidden) {
            problems.push(format!("{path}: `{forbidden}` is not allowed here"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    let ty = obj.get("type").and_then(Value::as_str);
    match ty {
        None if !(preserve || int_or_string) => problems.push(format!("{path}: no type")),
        Some("object" | "array" | "string" | "integer" | "number" | "boolean") | None => {}
        Some(other) => problems.push(format!("{path}: unknown type {other}")),
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        problems.push(format!("{path}: properties beside additionalProperties"));
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        problems.push(format!(
            "{path}: additionalProperties: false is not allowed"
        ));
    }
    if ty == Some("array") && !obj.contains_key("items") {
        problems.push(format!("{path}: array without items"));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        if ty != Some("object") {
            problems.push(format!("{path}: properties on a non-object"));
        }
        for (name, sub) in props {
            structural_problems(sub, &format!("{path}.{name}"), problems);
        }
        if let Some(required) = obj.get("required").and_then(Value::as_array) {
            for r in required {
                if !props.contains_key(r.as_str().unwrap_or_default()) {
                    problems.push(format!("{path}: required {r} is not a property"));
                }
            }
        }
    }
    if let Some(items) = obj.get("items") {
        structural_problems(items, &format!("{path}[]"), problems);
    }
    if let Some(ap) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        structural_problems(ap, &format!("{path}{{}}"), problems);
    }
    if obj.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map") {
        let keys = obj["x-kubernetes-list-map-keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let item_required = obj["items"]["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if keys.is_empty() {
            problems.push(format!("{path}: list-type map without list-map-keys"));
        }
        for k in keys {
            if !item_required.contains(&k) {
                problems.push(format!("{path}: list-map key {k} is not required"));
            }
        }
    }
    if let Some(default) = obj.get("default") {
        check_value_against(node, default, &format!("{path} (default)"), problems);
    }
    if let Some(values) = obj.get("enum").and_then(Value::as_array) {
        for v in values {
            check_value_against(&json!({"type": ty}), v, &format!("{path} (enum)"), problems);
        }
    }
    if let Some(p) = obj.get("pattern").and_then(Value::as_str)
        && let Err(e) = regex::Regex::new(p)
    {
        problems.push(format!("{path}: pattern does not compile: {e}"));
    }
    if let Some(rules) = obj
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for rule in rules {
            if !rule["rule"].is_string() {
                problems.push(format!("{path}: validation without a rule"));
            }
            if rule["message"].as_str().is_some_and(|m| m.contains('\n')) {
                problems.push(format!("{path}: rule message with a line break"));
            }
        }
    }
}

/// A value (a default or an enum member) must fit the node's type, enum, pattern and bounds,
/// or the API server refuses the CRD.
fn check_value_against(node: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    let ok_type = match node["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !ok_type {
        problems.push(format!(
            "{path}: {value} does not match type {}",
            node["type"]
        ));
        return;
    }
    let mut bare = node.clone();
    if let Some(o) = bare.as_object_mut() {
        o.remove("default");
    }
    if let Ok(validator) = jsonschema::validator_for(&bare)
        && let Err(e) = validator.validate(value)
    {
        problems.push(format!("{path}: {value} is invalid: {e}"));
    }
}

#[test]
fn schemas_are_structural() {
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = schema_for(&kind);
        let mut problems = vec![];
        structural_problems(&schema, &kind, &mut problems);
        // Only name and generateName may be specified under metadata.
        if let Some(meta) = schema["properties"]["metadata"]["properties"].as_object() {
            for k in meta.keys() {
                if k != "name" && k != "generateName" {
                    problems.push(format!("{kind}.metadata: field {k} may not be specified"));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "non-structural schema:\n{}",
            problems.join("\n")
        );
    }
}

#[test]
fn the_structural_check_catches_what_apiservers_refuse() {
    let bad = [
        json!({"type": "object", "properties": {"a": {"description": "no type"}}}),
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "string"}}),
        json!({"type": "object", "properties": {"a": {"type": "text"}}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "default": 3}}}),
        json!({"type": "object", "properties": {"a": {"type": "string", "enum": ["x"], "default": "y"}}}),
        json!({"type": "array"}),
    ];
    for schema in bad {
        let mut problems = vec![];
        structural_problems(&schema, "t", &mut problems);
        assert!(!problems.is_empty(), "not caught: {schema}");
    }
}

// ---------------------------------------------------------------------------------------------
// Examples

/// Every YAML document under `examples/` (recursively) with the file it came from.
fn example_documents() -> Vec<(PathBuf, Value)> {
    let mut files = vec![];
    collect_yaml(&root().join("examples"), &mut files);
    files.sort();
    let mut docs = vec![];
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if !value.is_null() {
                docs.push((file.clone(), value));
            }
        }
    }
    docs
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Checks an object the way the API server does on create (or update, with `old`): the
/// OpenAPI schema (types, patterns, lengths, enums, required) and then every CEL rule.
/// Returns every message.
fn admit(
    kind: &str,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), Vec<(String, String, String)>> {
    let schema = schema_for(kind);
    let mut errors = vec![];
    let validator = jsonschema::validator_for(&schema).unwrap();
    for e in validator.iter_errors(obj) {
        errors.push((
            e.instance_path().to_string(),
            "schema".to_owned(),
            e.to_string(),
        ));
    }
    if let Err(cel) = Validator::new().validate(&schema, obj, old) {
        for e in cel.iter() {
            errors.push((e.field_path.clone(), e.rule.clone(), e.message.clone()));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[test]
fn every_example_parses_and_is_admitted() {
    let docs = example_documents();
    let mut kinds = BTreeSet::new();
    for (file, doc) in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        if doc["apiVersion"] != api::API_VERSION {
            continue; // workload manifests (Deployments, …) live beside ours
        }
        // Through the Rust types and back: what the operator reads, with defaults applied.
        let typed = match kind.as_str() {
            "ServiceAccount" => {
                serde_json::to_value(serde_json::from_value::<ServiceAccount>(doc.clone()).unwrap())
            }
            "TrustedIssuer" => {
                serde_json::to_value(serde_json::from_value::<TrustedIssuer>(doc.clone()).unwrap())
            }
            "TokenGrant" => {
                serde_json::to_value(serde_json::from_value::<TokenGrant>(doc.clone()).unwrap())
            }
            "AccessToken" => {
                serde_json::to_value(serde_json::from_value::<AccessToken>(doc.clone()).unwrap())
            }
            other => panic!("{}: unknown kind {other}", file.display()),
        }
        .unwrap();
        for obj in [doc, &typed] {
            if let Err(e) = admit(&kind, obj, None) {
                panic!(
                    "{} ({kind} {}) is refused: {e:?}",
                    file.display(),
                    doc["metadata"]["name"]
                );
            }
        }
        kinds.insert(kind);
    }
    assert_eq!(kinds.len(), 4, "examples cover all four kinds");
}

#[test]
fn examples_cover_every_variant() {
    let docs: Vec<Value> = example_documents().into_iter().map(|(_, d)| d).collect();
    let has = |kind: &str, pointer: &str| {
        docs.iter()
            .any(|d| d["kind"] == kind && d.pointer(pointer).is_some())
    };
    for (kind, pointer) in [
        ("ServiceAccount", "/spec/authentication/clientSecret"),
        ("ServiceAccount", "/spec/authentication/privateKeyJwt"),
        ("ServiceAccount", "/spec/authentication/federated"),
        ("ServiceAccount", "/spec/api"),
        ("TrustedIssuer", "/spec/issuer"),
        ("TrustedIssuer", "/spec/azure"),
        ("TrustedIssuer", "/spec/kubernetes"),
        ("TrustedIssuer", "/spec/jwks"),
        ("TokenGrant", "/spec/output"),
        ("TokenGrant", "/spec/tenant"),
        ("TokenGrant", "/spec/delegation"),
        ("TokenGrant", "/spec/subject/issuerRef"),
    ] {
        assert!(has(kind, pointer), "no example of {kind} with {pointer}");
    }
    assert!(
        docs.iter().any(|d| d["kind"] == "TokenGrant"
            && d.pointer("/spec/output").is_none()
            && d.pointer("/spec/tenant").is_none()
            && d.pointer("/spec/delegation").is_none()),
        "no plain TokenGrant example"
    );
}

// ---------------------------------------------------------------------------------------------
// CEL rules: each refuses something, with its own message

fn service_account() -> Value {
    json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "a", "namespace": "n"},
        "spec": {
            "scopes": ["orders:read", "fr:idc:esv:*"],
            "audiences": ["https://orders.example.com"],
            "tokenLifetime": "1h",
            "api": {"audience": "api://a", "scopes": [{"name": "a:read"}]},
            "authentication": {
                "clientSecret": {"secretName": "a-secret", "rotateEvery": "720h", "gracePeriod": "24h"},
                "privateKeyJwt": {"secretName": "a-key", "algorithm": "EdDSA", "rotateEvery": "24h", "gracePeriod": "1h"},
                "federated": [{"issuerRef": {"name": "cluster"}, "subject": "system:serviceaccount:n:*"}]
            }
        },
        "status": {
            "clientId": "0f1e2d3c",
            "credentials": [
                {"id": "s1", "type": "ClientSecret", "created": "2026-11-23T00:00:00Z", "secretDigest": "sha256:abc"},
                {"id": "k1", "type": "PrivateKey", "created": "2026-11-23T00:00:00Z",
                 "publicKey": {"kty": "OKP", "crv": "Ed25519", "x": "abc"}}
            ]
        }
    })
}

fn trusted_issuer() -> Value {
    json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "TrustedIssuer",
        "metadata": {"name": "t", "namespace": "n"},
        "spec": {
            "issuer": "https://idp.example.com/tenant",
            "audiences": ["https://orders.example.com"],
            "clockSkew": "5m", "refreshInterval": "24h", "maxKeyAge": "1h"
        }
    })
}

fn token_grant() -> Value {
    json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
        "metadata": {"name": "g", "namespace": "n"},
        "spec": {
            "subject": {"serviceAccount": {"name": "a", "namespace": "m"}},
            "audience": "api://a",
            "scopes": ["a:read", "a:*"],
            "tenant": "acme.eu-1",
            "output": {"secretName": "g-token", "lifetime": "24h", "renewBefore": "23h"}
        }
    })
}

fn access_token() -> Value {
    json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "AccessToken",
        "metadata": {"name": "t", "namespace": "n"},
        "spec": {
            "serviceAccountName": "a",
            "audiences": ["api://a", "https://b.example.com"],
            "scopes": ["a:read"],
            "secretName": "t-token",
            "lifetime": "24h",
            "renewBefore": "23h"
        }
    })
}

/// Sets (or, with `Value::Null`, removes) the value at a JSON pointer, creating objects on
/// the way.
fn with(mut obj: Value, changes: &[(&str, Value)]) -> Value {
    for (pointer, value) in changes {
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        let mut cur = &mut obj;
        for seg in parent.split('/').skip(1) {
            cur = if let Ok(i) = seg.parse::<usize>() {
                &mut cur[i]
            } else {
                cur.as_object_mut()
                    .unwrap()
                    .entry(seg)
                    .or_insert_with(|| json!({}))
            };
        }
        match (cur, value) {
            (Value::Object(m), Value::Null) => {
                m.remove(last);
            }
            (Value::Object(m), v) => {
                m.insert(last.to_owned(), v.clone());
            }
            (Value::Array(a), v) => a[last.parse::<usize>().unwrap()] = v.clone(),
            (other, _) => panic!("cannot set {pointer} in {other}"),
        }
    }
    obj
}

struct Refusal {
    kind: &'static str,
    obj: Value,
    old: Option<Value>,
    message: &'static str,
}

fn refusals() -> Vec<Refusal> {
    let sa = service_account;
    let ti = trusted_issuer;
    let tg = token_grant;
    let at = access_token;
    let r = |kind, obj, message| Refusal {
        kind,
        obj,
        old: None,
        message,
    };
    vec![
        // ServiceAccount
        r(
            "ServiceAccount",
            with(
                sa(),
                &[
                    ("/spec/authentication", Value::Null),
                    ("/spec/api", Value::Null),
                ],
            ),
            "set at least one authentication method, or an api",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/scopes", json!(["orders read"]))]),
            "each scope is a scope token (no spaces, quotes or backslashes) with `*` only at its end",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/scopes", json!(["fr:*:read"]))]),
            "each scope is a scope token (no spaces, quotes or backslashes) with `*` only at its end",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/audiences", json!(["orders api"]))]),
            "each audience is a URI or name without spaces",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/tokenLifetime", json!("24h1s"))]),
            "tokenLifetime must be between 1m and 24h",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/tokenLifetime", json!("59s"))]),
            "tokenLifetime must be between 1m and 24h",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/api/audience", json!("a b"))]),
            "audience is a URI or name without spaces",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/api/scopes/0/name", json!("a:*"))]),
            "scope name is a scope token without spaces, quotes, backslashes or `*`",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/spec/authentication", json!({}))]),
            "authentication needs at least one of clientSecret, privateKeyJwt, federated",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/privateKeyJwt/secretName",
                    json!("a-secret"),
                )],
            ),
            "clientSecret and privateKeyJwt need different secretNames",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/clientSecret/gracePeriod",
                    json!("720h"),
                )],
            ),
            "gracePeriod must be shorter than rotateEvery",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/privateKeyJwt/gracePeriod",
                    json!("25h"),
                )],
            ),
            "gracePeriod must be shorter than rotateEvery",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/clientSecret/secretName",
                    json!("A_Secret"),
                )],
            ),
            "secretName must be a DNS-1123 subdomain",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/privateKeyJwt/secretName",
                    json!("-key"),
                )],
            ),
            "secretName must be a DNS-1123 subdomain",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[
                    (
                        "/spec/authentication/clientSecret/rotateEvery",
                        json!("59m"),
                    ),
                    ("/spec/authentication/clientSecret/gracePeriod", json!("1m")),
                ],
            ),
            "rotateEvery must be at least 1h",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[
                    (
                        "/spec/authentication/privateKeyJwt/rotateEvery",
                        json!("30m"),
                    ),
                    (
                        "/spec/authentication/privateKeyJwt/gracePeriod",
                        Value::Null,
                    ),
                ],
            ),
            "rotateEvery must be at least 1h",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[("/spec/authentication/clientSecret/gracePeriod", json!("0s"))],
            ),
            "gracePeriod must be positive",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[(
                    "/spec/authentication/privateKeyJwt/gracePeriod",
                    json!("0s"),
                )],
            ),
            "gracePeriod must be positive",
        ),
        r(
            "ServiceAccount",
            with(
                sa(),
                &[("/spec/authentication/federated/0/subject", json!("**"))],
            ),
            "subject needs more than wildcards",
        ),
        r(
            "ServiceAccount",
            with(sa(), &[("/status/credentials/0/secretDigest", Value::Null)]),
            "a client secret carries secretDigest, a private key carries publicKey",
        ),
        Refusal {
            kind: "ServiceAccount",
            obj: with(sa(), &[("/status/clientId", json!("another"))]),
            old: Some(sa()),
            message: "clientId is immutable once set",
        },
        // TrustedIssuer
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/kubernetes", json!({}))]),
            "set exactly one source: issuer (with optional jwksUri or jwks), kubernetes or azure",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/issuer", Value::Null)]),
            "set exactly one source: issuer (with optional jwksUri or jwks), kubernetes or azure",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[
                    ("/spec/jwksUri", json!("https://idp.example.com/keys")),
                    (
                        "/spec/jwks",
                        json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}),
                    ),
                ],
            ),
            "jwksUri and jwks are mutually exclusive",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[
                    ("/spec/issuer", Value::Null),
                    ("/spec/kubernetes", json!({})),
                    ("/spec/jwksUri", json!("https://idp.example.com/keys")),
                ],
            ),
            "jwksUri and jwks need issuer: the exact iss value tokens must carry",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/issuer", json!("http://idp.example.com"))]),
            "issuer must be an https URL (http only on localhost) without query or fragment",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[("/spec/issuer", json!("https://idp.example.com/?x=1"))],
            ),
            "issuer must be an https URL (http only on localhost) without query or fragment",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[("/spec/jwksUri", json!("ftp://idp.example.com/keys"))],
            ),
            "jwksUri must be an https URL (http only on localhost)",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/audiences", json!(["a b"]))]),
            "each audience is a URI or name without spaces",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/clockSkew", json!("5m1s"))]),
            "clockSkew must be at most 5m",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/refreshInterval", json!("30s"))]),
            "refreshInterval must be between 1m and 24h",
        ),
        r(
            "TrustedIssuer",
            with(ti(), &[("/spec/maxKeyAge", json!("169h"))]),
            "maxKeyAge must be between 1h and 168h",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[
                    ("/spec/issuer", Value::Null),
                    (
                        "/spec/azure",
                        json!({"tenantId": "not-a-guid-not-a-guid-not-a-guid-xx", "applicationId": "0b0f4c54-55ad-4f6a-9d43-5f4a2e6c1a11"}),
                    ),
                ],
            ),
            "tenantId must be a GUID",
        ),
        r(
            "TrustedIssuer",
            with(
                ti(),
                &[
                    ("/spec/issuer", Value::Null),
                    (
                        "/spec/azure",
                        json!({"tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47", "applicationId": "0b0f4c54-55ad-4f6a-9d43-5f4a2e6c1a1g"}),
                    ),
                ],
            ),
            "applicationId must be a GUID",
        ),
        // TokenGrant
        Refusal {
            kind: "TokenGrant",
            obj: with(tg(), &[("/spec/subject/serviceAccount/name", json!("b"))]),
            old: Some(tg()),
            message: "subject is immutable",
        },
        r(
            "TokenGrant",
            with(tg(), &[("/spec/audience", json!("api a"))]),
            "audience is a URI or name without spaces",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/scopes", json!(["a\\b"]))]),
            "each scope is a scope token (no spaces, quotes or backslashes) with `*` only at its end",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/tenant", json!("-acme"))]),
            "tenant is letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
        ),
        r(
            "TokenGrant",
            with(
                tg(),
                &[
                    ("/spec/subject/issuerRef", json!({"name": "idp"})),
                    ("/spec/subject/subject", json!("x")),
                ],
            ),
            "set exactly one of serviceAccount or issuerRef",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/subject/subject", json!("x"))]),
            "subject goes with issuerRef, and only with it",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/output/renewBefore", json!("24h"))]),
            "renewBefore must be shorter than lifetime",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/output/secretName", json!("g.token."))]),
            "secretName must be a DNS-1123 subdomain",
        ),
        r(
            "TokenGrant",
            with(
                tg(),
                &[
                    ("/spec/output/lifetime", json!("4m")),
                    ("/spec/output/renewBefore", json!("1m")),
                ],
            ),
            "lifetime must be between 5m and 24h",
        ),
        r(
            "TokenGrant",
            with(tg(), &[("/spec/output/renewBefore", json!("59s"))]),
            "renewBefore must be at least 1m",
        ),
        // AccessToken
        Refusal {
            kind: "AccessToken",
            obj: with(at(), &[("/spec/serviceAccountName", json!("b"))]),
            old: Some(at()),
            message: "serviceAccountName is immutable",
        },
        r(
            "AccessToken",
            with(at(), &[("/spec/audiences", json!(["api a"]))]),
            "each audience is a URI or name without spaces",
        ),
        r(
            "AccessToken",
            with(at(), &[("/spec/audiences", json!(["api://a", "api://a"]))]),
            "audiences must not repeat",
        ),
        r(
            "AccessToken",
            with(at(), &[("/spec/scopes", json!(["a:*"]))]),
            "each scope is a scope token without spaces, quotes, backslashes or wildcards",
        ),
        r(
            "AccessToken",
            with(at(), &[("/spec/secretName", json!("T"))]),
            "secretName must be a DNS-1123 subdomain",
        ),
        r(
            "AccessToken",
            with(
                at(),
                &[
                    ("/spec/lifetime", json!("25h")),
                    ("/spec/renewBefore", json!("1h")),
                ],
            ),
            "lifetime must be between 5m and 24h",
        ),
        r(
            "AccessToken",
            with(at(), &[("/spec/renewBefore", json!("30s"))]),
            "renewBefore must be at least 1m",
        ),
        r(
            "AccessToken",
            with(at(), &[("/spec/renewBefore", json!("24h"))]),
            "renewBefore must be shorter than lifetime",
        ),
    ]
}

#[test]
fn the_valid_bases_are_admitted() {
    assert_eq!(admit("ServiceAccount", &service_account(), None), Ok(()));
    assert_eq!(admit("TrustedIssuer", &trusted_issuer(), None), Ok(()));
    assert_eq!(admit("TokenGrant", &token_grant(), None), Ok(()));
    assert_eq!(admit("AccessToken", &access_token(), None), Ok(()));
    assert_eq!(
        admit(
            "AccessToken",
            &with(
                access_token(),
                &[
                    ("/spec/scopes", Value::Null),
                    ("/spec/renewBefore", Value::Null)
                ]
            ),
            None
        ),
        Ok(())
    );
    // Edges that must stay allowed.
    let edges = [
        (
            "ServiceAccount",
            with(service_account(), &[("/spec/tokenLifetime", json!("24h"))]),
        ),
        (
            "ServiceAccount",
            with(service_account(), &[("/spec/tokenLifetime", json!("1m"))]),
        ),
        (
            "ServiceAccount",
            with(service_account(), &[("/spec/authentication", Value::Null)]),
        ),
        (
            "ServiceAccount",
            with(service_account(), &[("/spec/api", Value::Null)]),
        ),
        (
            "ServiceAccount",
            with(
                service_account(),
                &[("/spec/authentication/clientSecret/rotateEvery", Value::Null)],
            ),
        ),
        (
            "ServiceAccount",
            with(service_account(), &[("/status/clientId", Value::Null)]),
        ),
        (
            "TrustedIssuer",
            with(
                trusted_issuer(),
                &[("/spec/issuer", json!("http://127.0.0.1:8080"))],
            ),
        ),
        (
            "TrustedIssuer",
            with(
                trusted_issuer(),
                &[("/spec/jwksUri", json!("https://idp.example.com/keys?v=2"))],
            ),
        ),
        (
            "TokenGrant",
            with(token_grant(), &[("/spec/output/renewBefore", Value::Null)]),
        ),
        (
            "TokenGrant",
            with(
                token_grant(),
                &[(
                    "/spec/subject",
                    json!({"issuerRef": {"name": "idp"}, "subject": "svc-1"}),
                )],
            ),
        ),
    ];
    for (kind, obj) in edges {
        assert_eq!(admit(kind, &obj, None), Ok(()), "{obj}");
    }
    // Transition rules allow unchanged values and a first client id.
    let sa = service_account();
    assert_eq!(admit("ServiceAccount", &sa, Some(&sa)), Ok(()));
    let without_id = with(sa.clone(), &[("/status/clientId", Value::Null)]);
    assert_eq!(admit("ServiceAccount", &sa, Some(&without_id)), Ok(()));
    let tg = token_grant();
    let changed_scopes = with(tg.clone(), &[("/spec/scopes", json!(["a:write"]))]);
    assert_eq!(admit("TokenGrant", &changed_scopes, Some(&tg)), Ok(()));
}

/// Every rule in a schema, as (kind, rule, message).
fn all_rules() -> BTreeSet<(String, String, String)> {
    fn walk(node: &Value, kind: &str, out: &mut BTreeSet<(String, String, String)>) {
        if let Some(rules) = node
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            for r in rules {
                out.insert((
                    kind.to_owned(),
                    r["rule"].as_str().unwrap().to_owned(),
                    r["message"].as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
        for key in ["properties", "additionalProperties"] {
            if let Some(m) = node.get(key).and_then(Value::as_object) {
                m.values().for_each(|v| walk(v, kind, out));
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, kind, out);
        }
    }
    let mut out = BTreeSet::new();
    for crd in api::crds() {
        let kind = crd.spec.names.kind.clone();
        walk(&schema_for(&kind), &kind, &mut out);
    }
    out
}

#[test]
fn every_cel_rule_refuses_its_example_with_its_message() {
    let mut covered = BTreeSet::new();
    for case in refusals() {
        let errors = admit(case.kind, &case.obj, case.old.as_ref()).expect_err(&format!(
            "admitted, but should be refused with {:?}: {}",
            case.message, case.obj
        ));
        let hit = errors
            .iter()
            .find(|(_, _, m)| m == case.message)
            .unwrap_or_else(|| panic!("refused, but not with {:?}: {errors:?}", case.message));
        // The object is refused for this reason alone: each case breaks one rule.
        assert!(
            errors
                .iter()
                .all(|(_, rule, m)| m == case.message || rule == "schema"),
            "{:?} also broke other rules: {errors:?}",
            case.message
        );
        covered.insert((case.kind.to_owned(), hit.1.clone(), hit.2.clone()));
    }
    let missing: Vec<_> = all_rules().difference(&covered).cloned().collect();
    assert!(
        missing.is_empty(),
        "CEL rules without a refused example: {missing:#?}"
    );
}
