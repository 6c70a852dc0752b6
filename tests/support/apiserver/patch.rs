//! The two patch formats: JSON merge patch (RFC 7386, also used for strategic merge patches)
//! and JSON patch (RFC 6902, all six operations). Plus the object-path helpers apply uses.

use serde_json::{Map, Value};

use super::error::ApiError;

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces.
pub(super) fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target.as_object_mut().expect("object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// RFC 6902, all or nothing. A malformed patch is a 400; an operation that cannot apply
/// (a failed `test`, a missing path) is a 422 `Invalid`, as the real server answers.
pub(super) fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is an array of operations"))?;
    let mut work = doc.clone();
    for op in ops {
        let field = |name: &str| -> Result<Vec<String>, ApiError> {
            let text = op[name].as_str().ok_or_else(|| {
                ApiError::bad_request(format!("operation is missing \"{name}\": {op}"))
            })?;
            pointer(text)
        };
        let path = field("path")?;
        let value = || {
            op.get("value").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("operation is missing \"value\": {op}"))
            })
        };
        let shown = op["path"].as_str().unwrap_or_default();
        let result = match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut work, &path, value()?),
            "remove" => remove(&mut work, &path).map(drop),
            "replace" => match get_mut(&mut work, &path) {
                Some(target) => {
                    *target = value()?;
                    Ok(())
                }
                None => Err(format!(
                    "replace operation does not apply: doc is missing key: {shown}"
                )),
            },
            "move" => {
                let from = field("from")?;
                remove(&mut work, &from).and_then(|moved| add(&mut work, &path, moved))
            }
            "copy" => {
                let from = field("from")?;
                match get_mut(&mut work, &from).map(|v| v.clone()) {
                    Some(copied) => add(&mut work, &path, copied),
                    None => Err(format!("copy from a missing path: {}", op["from"])),
                }
            }
            // evanphx/json-patch, which the real server uses, lets `null` match a missing
            // path; kube-runtime's finalizer helper relies on it (`test /metadata/finalizers null`).
            "test" => {
                let expected = value()?;
                let actual = get_mut(&mut work, &path)
                    .map(|v| v.clone())
                    .unwrap_or(Value::Null);
                if actual == expected {
                    Ok(())
                } else {
                    Err(format!("testing value {shown} failed: test failed"))
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected kind of operation: {other}"
                )));
            }
        };
        result.map_err(ApiError::invalid)?;
    }
    *doc = work;
    Ok(())
}

/// RFC 6901: `/a/b~1c` is `["a", "b/c"]`.
fn pointer(text: &str) -> Result<Vec<String>, ApiError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let rest = text
        .strip_prefix('/')
        .ok_or_else(|| ApiError::bad_request(format!("invalid JSON pointer: {text}")))?;
    Ok(rest
        .split('/')
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |node, segment| match node {
        Value::Object(map) => map.get_mut(segment),
        Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(items)) if last == "-" => {
            items.push(value);
            Ok(())
        }
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i <= items.len() => {
                items.insert(i, value);
                Ok(())
            }
            _ => Err(format!(
                "add operation does not apply: index {last} out of bounds"
            )),
        },
        _ => Err(format!(
            "add operation does not apply: doc is missing path: /{}",
            parent.join("/")
        )),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let missing = || {
        format!(
            "remove operation does not apply: doc is missing path: /{}",
            path.join("/")
        )
    };
    let (last, parent) = path.split_last().ok_or_else(missing)?;
    match get_mut(doc, parent) {
        Some(Value::Object(map)) => map.remove(last).ok_or_else(missing),
        Some(Value::Array(items)) => match last.parse::<usize>() {
            Ok(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// The value at an object path (`["spec", "x"]`), walking objects only.
pub(super) fn get_path<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(doc, |node, segment| node.as_object()?.get(segment))
}

/// Sets the value at an object path, creating (or replacing non-object) parents.
pub(super) fn set_path(doc: &mut Value, path: &[String], value: Value) {
    let mut node = doc;
    for segment in path {
        if !node.is_object() {
            *node = Value::Object(Map::new());
        }
        node = node
            .as_object_mut()
            .expect("object")
            .entry(segment.clone())
            .or_insert(Value::Null);
    }
    *node = value;
}

/// Removes the value at an object path, if there is one.
pub(super) fn remove_path(doc: &mut Value, path: &[String]) {
    if let Some((last, parent)) = path.split_last()
        && let Some(Value::Object(map)) =
            parent.iter().try_fold(&mut *doc, |node, s| node.get_mut(s))
    {
        map.remove(last);
    }
}
