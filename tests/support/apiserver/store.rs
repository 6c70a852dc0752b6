//! The state behind the stand-in: every object as JSON, one global resourceVersion counter,
//! a bounded history of changes (for watches that resume), the request log and the faults to
//! inject. Every verb is a method here; they run under one lock, so each request is atomic.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::Request;
use super::apply::Managers;
use super::error::{self, ApiError};
use super::kinds::{self, Kind};
use super::patch;
use super::select::Selector;

/// Kind index, namespace (empty when cluster-scoped), name. Ordered like etcd keys, so lists
/// come out by namespace, then name.
pub(super) type Key = (usize, String, String);

/// How many changes are kept for watches that resume from a resourceVersion.
const HISTORY: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches see it: the object after (its last state, for a delete) and before.
#[derive(Debug)]
pub(super) struct Change {
    pub rv: u64,
    pub kind: usize,
    pub change: ChangeType,
    pub object: Value,
    pub old: Option<Value>,
}

pub(super) struct Fault {
    pub verb: String,
    pub resource: String,
    pub status: u16,
    pub left: usize,
}

pub(super) struct State {
    pub kinds: Vec<Kind>,
    pub objects: BTreeMap<Key, Value>,
    /// Server-side apply field owners, by object uid.
    pub managers: HashMap<String, Managers>,
    pub rv: u64,
    pub history: VecDeque<Arc<Change>>,
    /// Watches from a resourceVersion older than this get 410 Gone.
    pub compacted: u64,
    pub requests: Vec<Request>,
    pub faults: Vec<Fault>,
    pub changes: broadcast::Sender<Arc<Change>>,
    random: u64,
    uids: u64,
}

impl State {
    pub fn new() -> Self {
        let random = RandomState::new().build_hasher().finish() | 1;
        let mut state = State {
            kinds: kinds::all(),
            objects: BTreeMap::new(),
            managers: HashMap::new(),
            rv: 0,
            history: VecDeque::new(),
            compacted: 0,
            requests: Vec::new(),
            faults: Vec::new(),
            changes: broadcast::channel(4096).0,
            random,
            uids: 0,
        };
        for name in ["default", "kube-system"] {
            let key = (state.namespace_kind(), String::new(), name.to_string());
            state.insert_new(key, json!({"metadata": {}}));
        }
        state
    }

    pub fn kind_index(&self, group: &str, version: &str, plural: &str) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.group == group && k.version == version && k.plural == plural)
    }

    fn namespace_kind(&self) -> usize {
        self.kind_index("", "v1", "namespaces")
            .expect("namespaces are served")
    }

    pub fn key(&self, kind: usize, namespace: Option<&str>, name: &str) -> Key {
        let namespace = if self.kinds[kind].namespaced {
            namespace.unwrap_or_default()
        } else {
            ""
        };
        (kind, namespace.to_string(), name.to_string())
    }

    /// Takes the next resourceVersion.
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Records a change at the current resourceVersion and tells every watch.
    fn emit(&mut self, kind: usize, change: ChangeType, object: &Value, old: Option<Value>) {
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            change,
            object: object.clone(),
            old,
        });
        self.history.push_back(change.clone());
        while self.history.len() > HISTORY {
            let dropped = self.history.pop_front().expect("not empty");
            self.compacted = dropped.rv;
        }
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(change);
    }

    /// Forgets the change history, as etcd compaction does: older resourceVersions expire.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    fn uid(&mut self) -> String {
        self.uids += 1;
        format!(
            "{:08x}-5354-4e44-8e00-{:012x}",
            self.random as u32, self.uids
        )
    }

    /// Five characters from the alphabet the real server uses for `generateName`.
    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| {
                self.random ^= self.random << 13;
                self.random ^= self.random >> 7;
                self.random ^= self.random << 17;
                ALPHABET[(self.random % ALPHABET.len() as u64) as usize] as char
            })
            .collect()
    }

    pub fn take_fault(&mut self, verb: &str, resource: &str) -> Result<(), ApiError> {
        let Some(fault) = self
            .faults
            .iter_mut()
            .find(|f| f.left > 0 && f.verb == verb && f.resource == resource)
        else {
            return Ok(());
        };
        fault.left -= 1;
        Err(ApiError::injected(fault.status, verb))
    }

    pub fn get(&self, kind: usize, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let key = self.key(kind, namespace, name);
        self.objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&self.kinds[kind], name))
    }

    /// Objects of a kind, in a namespace or all, that a selector matches, in key order.
    pub fn matching<'a>(
        &'a self,
        kind: usize,
        namespace: Option<&'a str>,
        selector: &'a Selector,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        self.objects
            .range((kind, String::new(), String::new())..)
            .take_while(move |(key, _)| key.0 == kind)
            .filter(move |(key, object)| {
                namespace.is_none_or(|ns| key.1 == ns) && selector.matches(object)
            })
    }

    /// A list at the current resourceVersion. With `limit`, the `continue` token is the
    /// namespace/name of the last item: pages come from the live state, not a snapshot.
    pub fn list(
        &self,
        kind: usize,
        namespace: Option<&str>,
        selector: &Selector,
        limit: Option<usize>,
        continue_from: Option<&str>,
    ) -> Result<Value, ApiError> {
        let after = match continue_from.filter(|c| !c.is_empty()) {
            None => None,
            Some(token) => {
                let (ns, name) = token
                    .split_once('/')
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                Some((ns.to_string(), name.to_string()))
            }
        };
        let mut items = Vec::new();
        let mut last = None;
        let mut more = false;
        for (key, object) in self.matching(kind, namespace, selector) {
            if after
                .as_ref()
                .is_some_and(|(ns, name)| (&key.1, &key.2) <= (ns, name))
            {
                continue;
            }
            if limit.is_some_and(|limit| limit > 0 && items.len() == limit) {
                more = true;
                break;
            }
            items.push(object.clone());
            last = Some(format!("{}/{}", key.1, key.2));
        }
        let k = &self.kinds[kind];
        let mut metadata = json!({"resourceVersion": self.rv.to_string()});
        if more {
            metadata["continue"] = json!(last);
        }
        Ok(json!({
            "apiVersion": k.api_version(), "kind": format!("{}List", k.kind),
            "metadata": metadata, "items": items,
        }))
    }

    /// 404 for a namespace that does not exist, 403 for one being deleted.
    pub fn check_namespace(&self, namespace: Option<&str>) -> Result<(), ApiError> {
        let Some(ns) = namespace else { return Ok(()) };
        let kind = self.namespace_kind();
        match self.objects.get(&(kind, String::new(), ns.to_string())) {
            None => Err(ApiError::not_found(&self.kinds[kind], ns)),
            Some(object) if deleting(object) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// POST: 409 AlreadyExists if the name is taken; `generateName` picks a free one.
    pub fn create(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        mut body: Value,
    ) -> Result<Value, ApiError> {
        let k = self.kinds[kind].clone();
        check_type(&k, &body)?;
        let meta = meta_mut(&mut body);
        if let Some(ns) = meta.get("namespace").and_then(Value::as_str)
            && k.namespaced
            && Some(ns) != namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        meta.remove("managedFields");
        // What etcd3's store answers; usually a fetched object sent back to create.
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| !rv.is_empty())
        {
            return Err(ApiError::new(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let name = match (
            meta.get("name").and_then(Value::as_str),
            meta.get("generateName").and_then(Value::as_str),
        ) {
            (Some(name), _) if !name.is_empty() => name.to_string(),
            (_, Some(prefix)) if !prefix.is_empty() => {
                let prefix = prefix.to_string();
                loop {
                    let name = format!("{prefix}{}", self.random_suffix());
                    if !self.objects.contains_key(&self.key(kind, namespace, &name)) {
                        break name;
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        };
        if k.namespaced {
            self.check_namespace(namespace)?;
        }
        let key = self.key(kind, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&k, &name));
        }
        if k.status {
            // The real server resets status on create when status is a subresource.
            body.as_object_mut().expect("object").remove("status");
        }
        Ok(self.insert_new(key, body))
    }

    /// Stores a new object with the fields the server owns set, and tells watches.
    pub fn insert_new(&mut self, key: Key, mut object: Value) -> Value {
        let k = self.kinds[key.0].clone();
        object["apiVersion"] = json!(k.api_version());
        object["kind"] = json!(k.kind);
        let uid = self.uid();
        let rv = self.next_rv();
        let meta = meta_mut(&mut object);
        meta.insert("name".into(), json!(key.2));
        if k.namespaced {
            meta.insert("namespace".into(), json!(key.1));
        } else {
            meta.remove("namespace");
        }
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            meta.remove(field);
        }
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if k.generation() {
            meta.insert("generation".into(), json!(1));
        }
        if k.is_namespace() {
            object["status"] = json!({"phase": "Active"});
        }
        builtin_rules(&k, &mut object);
        normalize(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.emit(key.0, ChangeType::Added, &object, None);
        object
    }

    /// PUT, to the object or its `/status`. A set `metadata.resourceVersion` must be current;
    /// custom resources must carry one.
    pub fn update(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        body: Value,
    ) -> Result<Value, ApiError> {
        let k = self.kinds[kind].clone();
        check_type(&k, &body)?;
        let old = self.get(kind, namespace, name)?;
        if let Some(body_name) = body["metadata"]["name"].as_str()
            && body_name != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        match body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|rv| !rv.is_empty())
        {
            Some(rv) if rv != old["metadata"]["resourceVersion"] => {
                return Err(ApiError::stale(&k, name));
            }
            // Custom resources allow no unconditional update, built-ins do.
            None if k.schema.is_some() => {
                return Err(ApiError::invalid(
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
                ));
            }
            _ => {}
        }
        let new = self.scoped(kind, &old, body, status);
        self.commit(&self.key(kind, namespace, name), &old, new)
    }

    /// PATCH with a merge, strategic merge (treated as merge) or JSON patch. Apply patches
    /// go to `apply::apply`.
    pub fn patch(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        status: bool,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let old = self.get(kind, namespace, name)?;
        let parsed: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
        let mut doc = old.clone();
        match content_type {
            "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
                patch::merge(&mut doc, &parsed)
            }
            "application/json-patch+json" => patch::json_patch(&mut doc, &parsed)?,
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the body of the request was in an unknown format: {other}"),
                ));
            }
        }
        // A resourceVersion the patch sets is a precondition, as on a PUT.
        if let Some(rv) = doc["metadata"]["resourceVersion"].as_str()
            && rv != old["metadata"]["resourceVersion"]
        {
            return Err(ApiError::stale(&self.kinds[kind], name));
        }
        let new = self.scoped(kind, &old, doc, status);
        self.commit(&self.key(kind, namespace, name), &old, new)
    }

    /// What a write may change: through `/status` only status; through the object everything
    /// but status when status is a subresource. `managedFields` stay the server's.
    fn scoped(&self, kind: usize, old: &Value, mut new: Value, status: bool) -> Value {
        let copy = |from: &Value, to: &mut Value, field: &str| match from.get(field) {
            Some(value) => to[field] = value.clone(),
            None => {
                to.as_object_mut().map(|m| m.remove(field));
            }
        };
        if status {
            let mut out = old.clone();
            copy(&new, &mut out, "status");
            return out;
        }
        if !new.is_object() {
            new = json!({});
        }
        if self.kinds[kind].status {
            copy(old, &mut new, "status");
        }
        let managed = old["metadata"].get("managedFields").cloned();
        let meta = meta_mut(&mut new);
        match managed {
            Some(managed) => meta.insert("managedFields".into(), managed),
            None => meta.remove("managedFields"),
        };
        new
    }

    /// Stores `new` in place of `old`: identity and server fields come from `old`, no new
    /// finalizers once deletion started, `generation` counts changes outside metadata and
    /// status, a no-op write changes nothing (same resourceVersion, no event), and an object
    /// being deleted goes once its finalizers are empty.
    pub fn commit(&mut self, key: &Key, old: &Value, mut new: Value) -> Result<Value, ApiError> {
        let k = self.kinds[key.0].clone();
        new["apiVersion"] = json!(k.api_version());
        new["kind"] = json!(k.kind);
        let server_fields = [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ];
        let meta = meta_mut(&mut new);
        for field in server_fields {
            match old["metadata"].get(field) {
                Some(value) => meta.insert(field.into(), value.clone()),
                None => meta.remove(field),
            };
        }
        meta.remove("selfLink");
        builtin_rules(&k, &mut new);
        normalize(&mut new);
        if deleting(old) {
            let before = finalizers(old);
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                ));
            }
        }
        if k.generation() && spec_part(old) != spec_part(&new) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if &new == old {
            return Ok(new);
        }
        if deleting(&new) && finalizers(&new).is_empty() {
            return Ok(self.remove(key, new));
        }
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key.clone(), new.clone());
        self.emit(key.0, ChangeType::Modified, &new, Some(old.clone()));
        Ok(new)
    }

    /// DELETE: the object while finalizers hold it (now with `deletionTimestamp`), else a
    /// `Status` of Success. Optional preconditions on uid and resourceVersion.
    pub fn delete(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let k = self.kinds[kind].clone();
        let object = self.get(kind, namespace, name)?;
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(expected) = options["preconditions"][field].as_str()
                && expected != object["metadata"][field]
            {
                let actual = object["metadata"][field].as_str().unwrap_or_default();
                let why = format!(
                    "Precondition failed: {label} in precondition: {expected}, {label} in object meta: {actual}"
                );
                return Err(ApiError::conflict(&k, name, &why));
            }
        }
        let key = self.key(kind, namespace, name);
        Ok(match self.delete_key(&key) {
            Some(pending) => pending,
            None => error::success(
                &k,
                name,
                object["metadata"]["uid"].as_str().unwrap_or_default(),
            ),
        })
    }

    /// DELETE on a collection: deletes what the selector matches, answers with those objects.
    pub fn delete_collection(
        &mut self,
        kind: usize,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Value {
        let keys: Vec<Key> = self
            .matching(kind, namespace, selector)
            .map(|(key, _)| key.clone())
            .collect();
        let mut items = Vec::new();
        for key in keys {
            if let Some(object) = self.objects.get(&key).cloned() {
                items.push(self.delete_key(&key).unwrap_or(object));
            }
        }
        let k = &self.kinds[kind];
        json!({
            "apiVersion": k.api_version(), "kind": format!("{}List", k.kind),
            "metadata": {"resourceVersion": self.rv.to_string()}, "items": items,
        })
    }

    /// Deletes one object: `Some(object)` while it is still there (finalizers, or a namespace
    /// emptying), `None` once it is gone. A namespace deletes everything in it.
    fn delete_key(&mut self, key: &Key) -> Option<Value> {
        let object = self.objects.get(key)?.clone();
        if deleting(&object) {
            return Some(object);
        }
        let k = self.kinds[key.0].clone();
        if finalizers(&object).is_empty() && !k.is_namespace() {
            self.remove(key, object);
            return None;
        }
        let mut marked = object.clone();
        let meta = meta_mut(&mut marked);
        meta.insert("deletionTimestamp".into(), json!(now()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        if k.generation() {
            let generation = object["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            meta.insert("generation".into(), json!(generation));
        }
        if k.is_namespace() {
            marked["status"] = json!({"phase": "Terminating"});
        }
        let rv = self.next_rv();
        marked["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key.clone(), marked.clone());
        self.emit(key.0, ChangeType::Modified, &marked, Some(object));
        if k.is_namespace() {
            let contents: Vec<Key> = self
                .objects
                .keys()
                .filter(|k| k.1 == key.2)
                .cloned()
                .collect();
            for inner in contents {
                self.delete_key(&inner);
            }
            self.finish_namespace(&key.2);
            return self.objects.get(key).cloned();
        }
        Some(marked)
    }

    /// Removes an object for good, then does what the garbage collector and the namespace
    /// controller would: dependents whose every owner is gone are deleted (background
    /// propagation), dangling owner references are dropped, an emptied terminating namespace goes.
    fn remove(&mut self, key: &Key, mut object: Value) -> Value {
        self.objects.remove(key);
        let rv = self.next_rv();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.managers.remove(&uid);
        self.emit(key.0, ChangeType::Deleted, &object, None);
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, o)| owner_uids(o).any(|owner| owner == uid))
            .map(|(key, _)| key.clone())
            .collect();
        for dependent in dependents {
            let Some(current) = self.objects.get(&dependent).cloned() else {
                continue;
            };
            let live_owner =
                owner_uids(&current).any(|owner| owner != uid && self.uid_exists(owner));
            if live_owner {
                let mut new = current.clone();
                if let Some(refs) = new["metadata"]["ownerReferences"].as_array_mut() {
                    refs.retain(|r| r["uid"] != uid.as_str());
                }
                let _ = self.commit(&dependent, &current, new);
            } else {
                self.delete_key(&dependent);
            }
        }
        if !key.1.is_empty() {
            self.finish_namespace(&key.1);
        }
        object
    }

    fn uid_exists(&self, uid: &str) -> bool {
        self.objects.values().any(|o| o["metadata"]["uid"] == uid)
    }

    /// A terminating namespace is removed once nothing is left in it.
    fn finish_namespace(&mut self, namespace: &str) {
        let key = (self.namespace_kind(), String::new(), namespace.to_string());
        let Some(object) = self.objects.get(&key).cloned() else {
            return;
        };
        if deleting(&object) && !self.objects.keys().any(|k| k.1 == namespace) {
            self.remove(&key, object);
        }
    }
}

/// A 400 when the body names another kind than the URL.
fn check_type(kind: &Kind, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request("the body is not a JSON object"));
    }
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let type_name = body["kind"].as_str().unwrap_or_default();
    if (!api_version.is_empty() && api_version != kind.api_version())
        || (!type_name.is_empty() && type_name != kind.kind)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) and kind ({type_name}) do not match {}, Kind={}",
            kind.api_version(),
            kind.kind
        )));
    }
    Ok(())
}

/// What the real server does to every written object of a kind, beyond metadata: a custom
/// resource's schema defaults and pruning; a Secret's `stringData` folded into `data` and its
/// `type` defaulted to `Opaque`.
fn builtin_rules(kind: &Kind, object: &mut Value) {
    if let Some(schema) = &kind.schema {
        kinds::apply_schema(object, schema);
    }
    if !(kind.group.is_empty() && kind.kind == "Secret") {
        return;
    }
    if object.get("type").is_none_or(Value::is_null) {
        object["type"] = json!("Opaque");
    }
    let Some(Value::Object(strings)) = object.as_object_mut().and_then(|m| m.remove("stringData"))
    else {
        return;
    };
    if !object["data"].is_object() {
        object["data"] = json!({});
    }
    for (key, value) in strings {
        let encoded = BASE64.encode(value.as_str().unwrap_or_default());
        object["data"][key] = json!(encoded);
    }
}

pub(super) fn now() -> String {
    let time = serde_json::to_value(Time(Timestamp::now())).expect("a time serializes");
    time.as_str().expect("a time is a string").to_string()
}

/// `metadata` as a map, created if absent.
pub(super) fn meta_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub(super) fn deleting(object: &Value) -> bool {
    object["metadata"]
        .get("deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn finalizers(object: &Value) -> Vec<String> {
    let list = object["metadata"]["finalizers"].as_array();
    list.into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect()
}

fn owner_uids(object: &Value) -> impl Iterator<Item = &str> {
    let refs = object["metadata"]["ownerReferences"].as_array();
    refs.into_iter().flatten().filter_map(|r| r["uid"].as_str())
}

/// The part whose changes bump `generation`: everything but metadata and status.
fn spec_part(object: &Value) -> Value {
    let mut part = object.clone();
    if let Some(map) = part.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    part
}

/// Drops what Go's `omitempty` drops, so a round trip looks as it does against the real
/// server: `finalizers: []` is stored as no finalizers (which kube's finalizer `test` expects).
pub(super) fn normalize(object: &mut Value) {
    let meta = meta_mut(object);
    meta.retain(|_, value| match value {
        Value::Null => false,
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::String(text) => !text.is_empty(),
        _ => true,
    });
}
