//! The kinds the stand-in serves: a few built-ins, and this project's CRDs read from `crds/`,
//! so scope, plural and the status subresource come from the real definitions. Also the
//! schema work the real server does for custom resources (defaults, pruning), and `/version`.

use std::path::Path;

use serde_json::{Map, Value, json};

/// One served resource (one group, version and plural).
#[derive(Clone, Debug)]
pub(super) struct Kind {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    /// Has the `status` subresource: spec and status are written through different paths.
    pub status: bool,
    /// The OpenAPI schema of a custom resource version (defaults and pruning); `None` for built-ins.
    pub schema: Option<Value>,
}

impl Kind {
    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Kind {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status: false,
            schema: None,
        }
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// How the real server names the resource in messages: `secrets`, `serviceaccounts.s2s.dev`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }

    /// Whether `metadata.generation` is kept: custom resources and kinds with a status
    /// subresource (none of the built-ins served here has one).
    pub fn generation(&self) -> bool {
        self.status || self.schema.is_some()
    }
}

/// The built-ins the operator touches, then every CRD in the repository's `crds/`.
pub(super) fn all() -> Vec<Kind> {
    let mut kinds = vec![
        Kind::builtin("", "v1", "namespaces", "Namespace", false),
        Kind::builtin("", "v1", "secrets", "Secret", true),
        Kind::builtin("", "v1", "configmaps", "ConfigMap", true),
        Kind::builtin("", "v1", "serviceaccounts", "ServiceAccount", true),
        Kind::builtin("", "v1", "events", "Event", true),
        Kind::builtin("events.k8s.io", "v1", "events", "Event", true),
        Kind::builtin("coordination.k8s.io", "v1", "leases", "Lease", true),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.expect("crds/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("CRD file reads");
        let crd: Value = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is YAML: {e}", file.display()));
        kinds.extend(from_crd(&crd));
    }
    kinds
}

/// One `Kind` per served version of a CustomResourceDefinition.
fn from_crd(crd: &Value) -> Vec<Kind> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .map(|v| Kind {
            group: text(&spec["group"]),
            version: text(&v["name"]),
            plural: text(&names["plural"]),
            kind: text(&names["kind"]),
            namespaced: spec["scope"] == "Namespaced",
            status: v["subresources"].get("status").is_some(),
            schema: Some(v["schema"]["openAPIV3Schema"].clone()),
        })
        .collect()
}

/// Applies a custom resource's schema the way the real server does on every write: fills in
/// `default`s and drops fields the schema does not know (unless it preserves unknown fields).
/// `apiVersion`, `kind` and `metadata` are left alone. No validation (types, patterns, CEL).
pub(super) fn apply_schema(object: &mut Value, schema: &Value) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    map.retain(|k, _| {
        matches!(k.as_str(), "apiVersion" | "kind" | "metadata") || props.contains_key(k)
    });
    for (key, sub) in &props {
        if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        structural(map, key, sub);
    }
}

/// Defaults `map[key]` from `schema` if absent, then walks into it.
fn structural(map: &mut Map<String, Value>, key: &str, schema: &Value) {
    // A `null` the schema does not allow is dropped (and so defaulted), as on the real server.
    if map.get(key).is_some_and(Value::is_null) && schema["nullable"] != true {
        map.remove(key);
    }
    if !map.contains_key(key) {
        match schema.get("default") {
            Some(default) => {
                map.insert(key.to_string(), default.clone());
            }
            None => return,
        }
    }
    let value = map.get_mut(key).expect("present");
    walk(value, schema);
}

fn walk(value: &mut Value, schema: &Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                if schema["x-kubernetes-preserve-unknown-fields"] != true {
                    map.retain(|k, _| props.contains_key(k));
                }
                for (key, sub) in props {
                    structural(map, key, sub);
                }
            } else if schema["additionalProperties"].is_object() {
                for item in map.values_mut() {
                    walk(item, &schema["additionalProperties"]);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// `/version`, which `Client::apiserver_version` asks for. No other discovery: kube-runtime
/// needs none, and typed or `ApiResource`-built APIs know their paths.
pub(super) fn version(path: &str) -> Option<Value> {
    (path.trim_end_matches('/') == "/version").then(|| {
        json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-standin", "platform": "linux/amd64"})
    })
}
