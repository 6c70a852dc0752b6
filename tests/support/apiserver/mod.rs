//! An in-process stand-in for the Kubernetes API server, for integration tests that run the
//! real kube-runtime machinery (Controller, watcher, reflector, finalizer) without a cluster.
//!
//! [`ApiServer`] is a `tower::Service` handed to `kube::Client::new`, so requests go through
//! kube's real request building and response parsing; only the network is missing. It speaks
//! JSON only and keeps its state in memory:
//!
//! * **Kinds**: core v1 namespaces (cluster-scoped), secrets, configmaps, serviceaccounts and
//!   events; events.k8s.io/v1 events; coordination.k8s.io/v1 leases; and this project's CRDs,
//!   read from `crds/*.yaml` (scope, plural and the status subresource from the real files).
//! * **Verbs**: get, list (label and field selectors, `limit`/`continue`), watch (see
//!   `watch.rs`), create (`generateName`, 409 AlreadyExists), update (409 Conflict on a stale
//!   `resourceVersion`), patch (merge, strategic merge treated as merge, JSON patch with
//!   `test`, server-side apply: see `apply.rs`), delete (preconditions), deletecollection;
//!   custom resources refuse an update without `resourceVersion`, as the real server does;
//!   the `/status` subresource for get, update and patch.
//! * **Server-owned fields**: `uid`, `creationTimestamp`, `resourceVersion` (one global
//!   counter), `generation` (custom resources: 1 on create, +1 when anything outside metadata
//!   and status changes, and when deletion starts); a write that changes nothing is a no-op
//!   (same resourceVersion, no watch event), as on the real server.
//! * **Status subresource**: writes to the object never change status, writes to `/status`
//!   change nothing else; status is dropped on create.
//! * **Deletion**: finalizers hold an object with `deletionTimestamp` set; no finalizer can be
//!   added then; the write that empties them removes it. Deleting a namespace deletes what is
//!   in it, and the namespace goes once it is empty. Creating in a missing namespace is a 404
//!   (`default` and `kube-system` exist from the start), in a terminating one a 403.
//! * **Garbage collection**, done at once instead of in the background: when an object goes,
//!   every object whose `ownerReferences` names its uid is deleted (finalizers permitting),
//!   unless another owner still exists, in which case only the dangling reference is dropped.
//! * **Custom resource schemas**: `default`s are filled in and unknown fields pruned, as the
//!   real server does; nothing is validated (no types, patterns or CEL rules).
//! * **Metadata-only requests** (`Accept: application/json;as=PartialObjectMetadata…`, which
//!   kube sends for `get_metadata`, `list_metadata`, `watch_metadata` and any
//!   `Api<PartialObjectMeta<K>>`) answer `meta.k8s.io/v1` `PartialObjectMetadata(List)`.
//! * **Errors** are `Status` objects with the real reasons and codes (NotFound, AlreadyExists,
//!   Conflict, Invalid, BadRequest, Expired, MethodNotAllowed, Forbidden).
//! * **For tests**: every resource request is recorded as (user, RBAC verb, group,
//!   resource[/subresource], namespace), failed ones included, so a test can hold them against
//!   the chart's RBAC (an apply that creates is recorded as `patch` and `create`: the real
//!   server authorizes both); [`ApiServer::fail_next`] injects errors; [`ApiServer::compact`]
//!   expires old resourceVersions; [`ApiServer::object`] reads the store directly.
//!
//! Simplified, beyond what the files say: no authentication or authorization (the user is a
//! label on the client); lists always read the latest state (`resourceVersion` and
//! `resourceVersionMatch` on lists are ignored, `continue` tokens are plain `namespace/name`
//! positions, not snapshots); `dryRun` is refused (400) rather than faked; `propagationPolicy`
//! (always background) and `gracePeriodSeconds` are ignored; no admission, no validation;
//! no discovery but `/version` (not recorded). Build clients inside a Tokio runtime (kube's
//! client spawns its buffer task there).

mod apply;
mod error;
mod kinds;
mod patch;
mod select;
mod store;
pub mod tcp;
mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use error::ApiError;
use kinds::Kind;
use select::Selector;
use store::{Fault, State};

/// The stand-in API server. Cheap to clone; clones share one state.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
}

/// One request served (or refused), in RBAC terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub user: String,
    /// get, list, watch, create, update, patch, delete or deletecollection.
    pub verb: String,
    /// `""` for core.
    pub group: String,
    /// The plural, with the subresource if any: `secrets`, `serviceaccounts/status`.
    pub resource: String,
    pub namespace: Option<String>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiServer {
    /// A server with the namespaces `default` and `kube-system` and nothing else.
    pub fn new() -> Self {
        ApiServer {
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    /// A client of this server, as user `test`, default namespace `default`.
    pub fn client(&self) -> kube::Client {
        self.client_as("test")
    }

    /// A client of this server whose requests are recorded as `user`'s.
    pub fn client_as(&self, user: &str) -> kube::Client {
        let server = self.clone();
        let user = user.to_string();
        let service = tower::service_fn(move |request: hyper::Request<kube::client::Body>| {
            let server = server.clone();
            let user = user.clone();
            async move { Ok::<_, Infallible>(server.serve(user, request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Every resource request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// A stored object, by API group (`""` for core), plural, namespace and name.
    pub fn object(
        &self,
        group: &str,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let state = self.lock();
        let kind = state
            .kinds
            .iter()
            .position(|k| k.group == group && k.plural == resource)?;
        state.get(kind, namespace, name).ok()
    }

    /// The stored objects of a resource, in one namespace or all.
    pub fn objects(&self, group: &str, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let state = self.lock();
        let Some(kind) = state
            .kinds
            .iter()
            .position(|k| k.group == group && k.plural == resource)
        else {
            return Vec::new();
        };
        let all = Selector::default();
        state
            .matching(kind, namespace, &all)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// Makes the next `n` requests with this RBAC verb on this resource (`secrets`,
    /// `serviceaccounts/status`) fail with `status` and a matching `Status` reason.
    pub fn fail_next(&self, verb: &str, resource: &str, status: u16, n: usize) {
        self.lock().faults.push(Fault {
            verb: verb.into(),
            resource: resource.into(),
            status,
            left: n,
        });
    }

    /// Forgets the change history, as etcd compaction does: a watch from any resourceVersion
    /// before now gets 410 Gone (reason `Expired`).
    pub fn compact(&self) {
        self.lock().compact();
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent state: each request
        // is applied whole or not at all.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn serve(
        self,
        user: String,
        request: hyper::Request<kube::client::Body>,
    ) -> hyper::Response<ResponseBody> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return respond(Err(ApiError::bad_request(format!("reading the body: {e}")))),
        };
        let query = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default();
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
        };
        let call = Call {
            user: &user,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query,
            accept: header(ACCEPT),
            content_type: header(CONTENT_TYPE),
            body: &body,
        };
        let outcome = handle(&mut self.lock(), &call);
        respond(outcome)
    }
}

struct Call<'a> {
    user: &'a str,
    method: &'a str,
    path: &'a str,
    query: HashMap<String, String>,
    accept: &'a str,
    content_type: &'a str,
    body: &'a [u8],
}

enum Outcome {
    Json(u16, Value),
    Watch(mpsc::Receiver<Bytes>),
}

/// A resource path: `/api/v1/…` or `/apis/{group}/{version}/…`, then
/// `[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`.
struct Route {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn parse(path: &str, kinds: &[Kind]) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        // `namespaces/x/secrets` is in a namespace; `namespaces/x` and `namespaces/x/status`
        // are the namespace itself.
        let served = |plural: &str| {
            kinds
                .iter()
                .any(|k| k.group == group && k.version == version && k.plural == plural)
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, ..] if served(plural) => (Some(ns.to_string()), &rest[2..]),
            _ => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (*plural, None, None),
            [plural, name] => (*plural, Some(*name), None),
            [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
            _ => return None,
        };
        if [plural]
            .into_iter()
            .chain(name)
            .chain(subresource)
            .any(str::is_empty)
        {
            return None;
        }
        Some(Route {
            group: group.into(),
            version: version.into(),
            namespace,
            plural: plural.into(),
            name: name.map(String::from),
            subresource: subresource.map(String::from),
        })
    }
}

fn handle(state: &mut State, call: &Call) -> Result<Outcome, ApiError> {
    if call.method == "GET"
        && let Some(document) = kinds::version(call.path)
    {
        return Ok(Outcome::Json(200, document));
    }
    let route = Route::parse(call.path, &state.kinds).ok_or_else(ApiError::no_route)?;
    let query = |name: &str| call.query.get(name).map(String::as_str);
    let verb = match (call.method, route.name.is_some()) {
        ("GET", _) if matches!(query("watch"), Some("true" | "1")) => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let resource = match &route.subresource {
        Some(sub) => format!("{}/{sub}", route.plural),
        None => route.plural.clone(),
    };
    state.requests.push(Request {
        user: call.user.into(),
        verb: verb.into(),
        group: route.group.clone(),
        resource: resource.clone(),
        namespace: route.namespace.clone(),
    });
    state.take_fault(verb, &resource)?;

    let kind = state
        .kind_index(&route.group, &route.version, &route.plural)
        .ok_or_else(ApiError::no_route)?;
    let info = state.kinds[kind].clone();
    let status = match route.subresource.as_deref() {
        None => false,
        Some("status") if info.status => true,
        Some(_) => return Err(ApiError::no_route()),
    };
    let namespace = route.namespace.as_deref();
    let misplaced = if info.namespaced {
        namespace.is_none() && route.name.is_some()
    } else {
        namespace.is_some()
    };
    if misplaced {
        return Err(ApiError::no_route());
    }
    // Refused rather than ignored: a dry run that wrote would mislead the test.
    if query("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the API stand-in",
        ));
    }
    let selector = || Selector::parse(query("labelSelector"), query("fieldSelector"));
    let json_body = || -> Result<Value, ApiError> {
        serde_json::from_slice(call.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the body: {e}")))
    };
    let metadata_only = call.accept.contains("as=PartialObjectMetadata");
    let (code, value) = match (verb, route.name.as_deref()) {
        ("get", Some(name)) => (200, state.get(kind, namespace, name)?),
        ("list", None) => {
            let limit = query("limit")
                .map(|l| {
                    l.parse::<usize>()
                        .map_err(|_| ApiError::bad_request("invalid limit"))
                })
                .transpose()?;
            (
                200,
                state.list(kind, namespace, &selector()?, limit, query("continue"))?,
            )
        }
        ("watch", name) => {
            let mut selector = selector()?;
            if let Some(name) = name {
                selector = selector.with_name(name);
            }
            let timeout = query("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .unwrap_or(1800);
            let watch = watch::Watch {
                kind,
                info,
                namespace: namespace.map(String::from),
                selector,
                bookmarks: query("allowWatchBookmarks") == Some("true"),
                initial_events: query("sendInitialEvents") == Some("true"),
                timeout: Duration::from_secs(timeout),
                metadata_only,
            };
            let lines = watch::start(state, watch, query("resourceVersion"))?;
            return Ok(Outcome::Watch(lines));
        }
        ("create", None) if !(status || info.namespaced && namespace.is_none()) => {
            (201, state.create(kind, namespace, json_body()?)?)
        }
        ("update", Some(name)) => (
            200,
            state.update(kind, namespace, name, status, json_body()?)?,
        ),
        ("patch", Some(name)) => {
            let content_type = call
                .content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim();
            let force = query("force") == Some("true");
            if content_type == "application/apply-patch+yaml" {
                let manager = query("fieldManager");
                let (code, object) = apply::apply(
                    state, kind, namespace, name, status, call.body, manager, force,
                )?;
                // An apply that creates is authorized for `create` as well.
                if code == 201 {
                    let mut create = state.requests.last().expect("recorded above").clone();
                    create.verb = "create".into();
                    state.requests.push(create);
                }
                (code, object)
            } else if force {
                return Err(ApiError::invalid(
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch",
                ));
            } else {
                (
                    200,
                    state.patch(kind, namespace, name, status, content_type, call.body)?,
                )
            }
        }
        ("delete", Some(name)) if !status => {
            let options = if call.body.is_empty() {
                json!({})
            } else {
                json_body()?
            };
            (200, state.delete(kind, namespace, name, &options)?)
        }
        ("deletecollection", None) => (200, state.delete_collection(kind, namespace, &selector()?)),
        _ => return Err(ApiError::method_not_allowed()),
    };
    Ok(Outcome::Json(
        code,
        if metadata_only { partial(value) } else { value },
    ))
}

/// The `PartialObjectMetadata` view of an object, or a `PartialObjectMetadataList` of a list.
fn partial(value: Value) -> Value {
    let meta = |metadata: &Value| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": metadata});
    match (value["kind"].as_str(), value["items"].as_array()) {
        (Some("Status"), _) => value,
        (_, Some(items)) => json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": value["metadata"],
            "items": items.iter().map(|item| meta(&item["metadata"])).collect::<Vec<_>>(),
        }),
        _ => meta(&value["metadata"]),
    }
}

fn respond(outcome: Result<Outcome, ApiError>) -> hyper::Response<ResponseBody> {
    let json = |value: &Value| ResponseBody::Full(Some(Bytes::from(value.to_string())));
    let (code, body) = match outcome {
        Ok(Outcome::Json(code, value)) => (code, json(&value)),
        Ok(Outcome::Watch(lines)) => (200, ResponseBody::Stream(lines)),
        Err(error) => (error.code, json(&error.to_status())),
    };
    hyper::Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid response")
}

/// A whole JSON document, or the lines of a watch as they come.
enum ResponseBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Stream(lines) => lines
                .poll_recv(cx)
                .map(|line| line.map(|b| Ok(Frame::data(b)))),
        }
    }
}
