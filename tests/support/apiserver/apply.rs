//! Server-side apply, simplified.
//!
//! What is kept of the real thing: `fieldManager` is required; the applied object is merged
//! into the live one (or creates it); each manager owns the leaf fields it applied; changing a
//! field another manager owns, to a different value, is a 409 Conflict unless `force=true`,
//! which takes the field over; a field a manager applied before and omits now is removed
//! unless another manager still owns it; `/status` applies touch only status, applies to the
//! object never touch status when status is a subresource; `metadata.managedFields` shows the
//! owners (operation `Apply`, a FieldsV1 tree).
//!
//! What is simplified: lists are atomic (owned and replaced whole, no `listType=map` merge
//! keys); only appliers own fields (creates, updates and non-apply patches take no ownership
//! and so never conflict); an explicit `null` removes the field; the FieldsV1 tree has no `.`
//! entries.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::patch::{get_path, remove_path, set_path};
use super::store::{State, meta_mut, now};

type FieldPath = Vec<String>;

/// Owners of one object's fields: by (manager, applied through `/status`).
#[derive(Clone, Debug, Default)]
pub(super) struct Managers(BTreeMap<(String, bool), Owned>);

#[derive(Clone, Debug)]
pub(super) struct Owned {
    fields: BTreeSet<FieldPath>,
    time: String,
}

/// Metadata fields that identify the object or belong to the server: never owned.
const NOT_OWNED: &[&str] = &[
    "name",
    "namespace",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// PATCH with `application/apply-patch+yaml`: 201 with the object when it creates it, else 200.
#[allow(clippy::too_many_arguments)]
pub(super) fn apply(
    state: &mut State,
    kind: usize,
    namespace: Option<&str>,
    name: &str,
    status: bool,
    body: &[u8],
    manager: Option<&str>,
    force: bool,
) -> Result<(u16, Value), ApiError> {
    let k = state.kinds[kind].clone();
    let manager = manager
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            )
        })?;
    // JSON is YAML: kube sends JSON with this content type.
    let applied: Value = serde_yaml::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if applied["apiVersion"] != k.api_version().as_str() || applied["kind"] != k.kind.as_str() {
        return Err(ApiError::bad_request(format!(
            "invalid object type: {}, Kind={} (apply needs apiVersion {} and kind {})",
            applied["apiVersion"],
            applied["kind"],
            k.api_version(),
            k.kind
        )));
    }
    if let Some(other) = applied["metadata"]["name"].as_str()
        && other != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({other}) does not match the name on the URL ({name})"
        )));
    }
    if let Some(other) = applied["metadata"]["namespace"].as_str()
        && k.namespaced
        && Some(other) != namespace
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let key = state.key(kind, namespace, name);
    let existing = state.objects.get(&key).cloned();
    let Some(existing) = existing else {
        if status {
            return Err(ApiError::not_found(&k, name));
        }
        state.check_namespace(namespace.filter(|_| k.namespaced))?;
        let mut managers = Managers::default();
        let mut object = json!({"apiVersion": k.api_version(), "kind": k.kind, "metadata": {}});
        let leaves = leaves_in_scope(&applied, false, k.status);
        merge_leaves(&mut object, &mut managers, manager, false, &leaves);
        write_managed_fields(&mut object, &managers, &k.api_version());
        let created = state.insert_new(key, object);
        let uid = created["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        state.managers.insert(uid, managers);
        return Ok((201, created));
    };
    if let Some(rv) = applied["metadata"]["resourceVersion"].as_str()
        && rv != existing["metadata"]["resourceVersion"]
    {
        return Err(ApiError::stale(&k, name));
    }
    let uid = existing["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut managers = state.managers.get(&uid).cloned().unwrap_or_default();
    let me = (manager.to_string(), status);
    let leaves = leaves_in_scope(&applied, status, k.status);

    let mut conflicts: Vec<(String, FieldPath)> = Vec::new();
    for (path, value) in leaves.iter().filter(|(_, v)| !v.is_null()) {
        // `{}` asks for the map to exist, not to be empty: it differs only from a non-map.
        let differs = match get_path(&existing, path) {
            Some(current) if is_empty_map(value) => !current.is_object(),
            Some(current) => current != value,
            None => false,
        };
        if !differs {
            continue;
        }
        for (who, owned) in &managers.0 {
            if *who != me && owned.fields.iter().any(|f| overlaps(f, path)) {
                conflicts.push((who.0.clone(), path.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&conflicts));
        }
        for ((who, _), owned) in managers.0.iter_mut() {
            owned
                .fields
                .retain(|f| !conflicts.iter().any(|(m, p)| m == who && overlaps(f, p)));
        }
    }

    let mut object = existing.clone();
    merge_leaves(&mut object, &mut managers, manager, status, &leaves);
    write_managed_fields(&mut object, &managers, &k.api_version());
    let result = state.commit(&key, &existing, object)?;
    // The write may have removed the object (an apply that empties finalizers during deletion).
    if state.objects.contains_key(&key) {
        state.managers.insert(uid, managers);
    }
    Ok((200, result))
}

/// Removes what `manager` gave up (and nobody else owns), writes the applied leaves, and
/// records the new ownership.
fn merge_leaves(
    object: &mut Value,
    managers: &mut Managers,
    manager: &str,
    status: bool,
    leaves: &[(FieldPath, Value)],
) {
    let me = (manager.to_string(), status);
    let fields: BTreeSet<FieldPath> = leaves
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(p, _)| p.clone())
        .collect();
    if let Some(before) = managers.0.get(&me) {
        for dropped in before.fields.difference(&fields) {
            let kept = managers
                .0
                .iter()
                .any(|(who, o)| *who != me && o.fields.iter().any(|f| overlaps(f, dropped)));
            if !kept {
                remove_path(object, dropped);
            }
        }
    }
    for (path, value) in leaves {
        if value.is_null() {
            remove_path(object, path);
        } else if is_empty_map(value) {
            if !get_path(object, path).is_some_and(Value::is_object) {
                set_path(object, path, value.clone());
            }
        } else {
            set_path(object, path, value.clone());
        }
    }
    match managers.0.get_mut(&me) {
        Some(owned) if owned.fields == fields => {}
        Some(owned) => {
            owned.fields = fields;
            owned.time = now();
        }
        None => {
            managers.0.insert(
                me,
                Owned {
                    fields,
                    time: now(),
                },
            );
        }
    }
    managers.0.retain(|_, owned| !owned.fields.is_empty());
}

/// The applied leaf fields that this request may set, with their values. A leaf is anything
/// but a non-empty object: scalars, lists (atomic) and `{}` (which only makes the map exist).
fn leaves_in_scope(applied: &Value, status: bool, has_status: bool) -> Vec<(FieldPath, Value)> {
    let mut out = Vec::new();
    for (key, value) in applied.as_object().into_iter().flatten() {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" if !status => {
                for (field, inner) in value.as_object().into_iter().flatten() {
                    if !NOT_OWNED.contains(&field.as_str()) {
                        leaves(inner, vec!["metadata".into(), field.clone()], &mut out);
                    }
                }
            }
            "status" if status || !has_status => leaves(value, vec![key.clone()], &mut out),
            "metadata" | "status" => {}
            _ if !status => leaves(value, vec![key.clone()], &mut out),
            _ => {}
        }
    }
    out
}

fn leaves(value: &Value, path: FieldPath, out: &mut Vec<(FieldPath, Value)>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, inner) in map {
                let mut deeper = path.clone();
                deeper.push(key.clone());
                leaves(inner, deeper, out);
            }
        }
        _ => out.push((path, value.clone())),
    }
}

fn is_empty_map(value: &Value) -> bool {
    value.as_object().is_some_and(Map::is_empty)
}

/// One path lies within the other (or they are equal).
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let shown: Vec<String> = conflicts
        .iter()
        .map(|(manager, path)| format!("conflict with \"{manager}\": .{}", path.join(".")))
        .collect();
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    let message = format!(
        "Apply failed with {} conflict{plural}: {}",
        conflicts.len(),
        shown.join(", ")
    );
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(manager, path)| {
            json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with \"{manager}\""),
                "field": format!(".{}", path.join(".")),
            })
        })
        .collect();
    let mut error = ApiError::new(409, "Conflict", message);
    error.details = Some(json!({"causes": causes}));
    error
}

/// Shows the owners in `metadata.managedFields`, one `Apply` entry per manager.
fn write_managed_fields(object: &mut Value, managers: &Managers, api_version: &str) {
    let entries: Vec<Value> = managers
        .0
        .iter()
        .map(|((manager, status), owned)| {
            let mut tree = Map::new();
            for path in &owned.fields {
                let mut node = &mut tree;
                for segment in path {
                    node = node
                        .entry(format!("f:{segment}"))
                        .or_insert_with(|| json!({}))
                        .as_object_mut()
                        .expect("tree nodes are objects");
                }
            }
            let mut entry = json!({
                "manager": manager, "operation": "Apply", "apiVersion": api_version,
                "time": owned.time, "fieldsType": "FieldsV1", "fieldsV1": tree,
            });
            if *status {
                entry["subresource"] = json!("status");
            }
            entry
        })
        .collect();
    meta_mut(object).insert("managedFields".into(), Value::Array(entries));
}
