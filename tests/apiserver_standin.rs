//! The in-process API stand-in (`tests/support/apiserver`), exercised only through kube's own
//! client and runtime: what it answers is what kube-rs makes of it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use s2s_operator::api::ServiceAccount;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Request};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Polls `check` until it holds, or panics after `TIMEOUT` naming `what`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The HTTP code of a failed call.
fn code<T: std::fmt::Debug>(result: kube::Result<T>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn reason<T: std::fmt::Debug>(result: kube::Result<T>) -> String {
    match result {
        Err(kube::Error::Api(status)) => status.reason.clone(),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn secret(name: &str, labels: Value) -> Secret {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "stringData": {"key": "value"},
    }))
    .unwrap()
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"a": "1"}})).unwrap()
}

fn account_resource() -> ApiResource {
    ApiResource::erase::<ServiceAccount>(&())
}

/// An s2s.dev ServiceAccount as raw JSON: `tokenLifetime` left for the schema default.
fn account(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": name},
        "spec": {"audiences": ["api://orders"], "authentication": {"clientSecret": {"secretName": format!("{name}-credentials")}}},
        "status": {"clientId": "set-by-a-client"},
    }))
    .unwrap()
}

#[tokio::test]
async fn secrets_crud() {
    let server = ApiServer::new();
    let api: Api<Secret> = Api::default_namespaced(server.client());

    let created = api
        .create(&PostParams::default(), &secret("one", json!({})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.namespace.as_deref(), Some("default"));
    assert_eq!(
        meta.generation, None,
        "built-ins without status keep no generation"
    );
    // stringData is folded into data, type defaulted, as the real server does.
    assert_eq!(created.data.as_ref().unwrap()["key"].0, b"value");
    assert_eq!(created.string_data, None);
    assert_eq!(created.type_.as_deref(), Some("Opaque"));

    let again = api
        .create(&PostParams::default(), &secret("one", json!({})))
        .await;
    assert_eq!(reason(again), "AlreadyExists");

    let mut generated = secret("", json!({}));
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api
        .create(&PostParams::default(), &generated)
        .await
        .unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);

    let mut fetched = api.get("one").await.unwrap();
    assert_eq!(fetched, created);
    fetched.metadata.labels = Some([("k".to_string(), "v".to_string())].into());
    let replaced = api
        .replace("one", &PostParams::default(), &fetched)
        .await
        .unwrap();
    assert!(
        replaced.resource_version().unwrap().parse::<u64>().unwrap()
            > created.resource_version().unwrap().parse::<u64>().unwrap()
    );
    // A write that changes nothing is not a write.
    let same = api
        .replace("one", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(same.resource_version(), replaced.resource_version());

    let list = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 2);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    let deleted = api.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "gone at once: a Status");
    assert_eq!(code(api.get("one").await), 404);
    assert_eq!(api.get_opt("one").await.unwrap(), None);
    assert_eq!(code(api.delete("one", &DeleteParams::default()).await), 404);

    // Creating in a namespace that does not exist is a 404, as on a real server.
    let elsewhere: Api<Secret> = Api::namespaced(server.client(), "missing");
    assert_eq!(
        code(
            elsewhere
                .create(&PostParams::default(), &secret("x", json!({})))
                .await
        ),
        404
    );
}

#[tokio::test]
async fn custom_resources_status_and_generation() {
    let server = ApiServer::new();
    let client = server.client();
    let api: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &account_resource());

    let created = api
        .create(&PostParams::default(), &account("orders"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.data.get("status").is_none(),
        "status is not written through create"
    );
    assert_eq!(
        created.data["spec"]["tokenLifetime"], "1h",
        "schema default filled in"
    );

    // The crate's own type reads it back.
    let typed: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    let account = typed.get("orders").await.unwrap();
    assert_eq!(account.spec.audiences, ["api://orders"]);

    // Status through /status: spec and generation untouched.
    let status = json!({"apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "status": {"clientId": "c-1", "observedGeneration": 1}});
    let after = typed
        .patch_status(
            "orders",
            &PatchParams::apply("operator"),
            &Patch::Apply(&status),
        )
        .await
        .unwrap();
    assert_eq!(
        after.status.as_ref().unwrap().client_id.as_deref(),
        Some("c-1")
    );
    assert_eq!(after.metadata.generation, Some(1));
    assert!(
        after
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|m| m.subresource.as_deref() == Some("status"))
    );

    // A spec change through the object bumps generation; a status in that write is ignored.
    let patch = json!({"spec": {"audiences": ["api://orders", "api://billing"]}, "status": {"clientId": "nope"}});
    let after = typed
        .patch("orders", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(after.metadata.generation, Some(2));
    assert_eq!(
        after.status.as_ref().unwrap().client_id.as_deref(),
        Some("c-1")
    );

    // Metadata changes do not bump generation.
    let labels = json!({"metadata": {"labels": {"team": "a"}}});
    let after = typed
        .patch("orders", &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    assert_eq!(after.metadata.generation, Some(2));

    // PUT on /status ignores everything but status.
    let mut changed = after.clone();
    changed.spec.audiences = vec!["api://ignored".into()];
    changed.status.as_mut().unwrap().client_id = Some("c-2".into());
    let after = typed
        .replace_status("orders", &PostParams::default(), &changed)
        .await
        .unwrap();
    assert_eq!(after.spec.audiences, ["api://orders", "api://billing"]);
    assert_eq!(
        after.status.as_ref().unwrap().client_id.as_deref(),
        Some("c-2")
    );
    assert_eq!(after.metadata.generation, Some(2));

    // Custom resources allow no unconditional update.
    let mut unconditional = after.clone();
    unconditional.metadata.resource_version = None;
    let refused = typed
        .replace("orders", &PostParams::default(), &unconditional)
        .await;
    assert_eq!(code(refused), 422);

    // Fields the schema does not know are pruned.
    let unknown = json!({"spec": {"noSuchField": true}});
    let after = api
        .patch("orders", &PatchParams::default(), &Patch::Merge(&unknown))
        .await
        .unwrap();
    assert!(after.data["spec"].get("noSuchField").is_none());
}

#[tokio::test]
async fn stale_resource_version_is_a_conflict() {
    let server = ApiServer::new();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = api
        .create(&PostParams::default(), &config_map("cm"))
        .await
        .unwrap();
    let mut newer = first.clone();
    newer.data = Some([("a".to_string(), "2".to_string())].into());
    api.replace("cm", &PostParams::default(), &newer)
        .await
        .unwrap();

    let mut stale = first.clone();
    stale.data = Some([("a".to_string(), "3".to_string())].into());
    let error = api.replace("cm", &PostParams::default(), &stale).await;
    assert_eq!((reason(error), 409), ("Conflict".to_string(), 409));

    let old_rv = first.resource_version().unwrap();
    let patch = json!({"metadata": {"resourceVersion": old_rv}, "data": {"a": "4"}});
    assert_eq!(
        code(
            api.patch("cm", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        ),
        409
    );

    let precondition = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some(old_rv),
            uid: None,
        }),
        ..DeleteParams::default()
    };
    assert_eq!(code(api.delete("cm", &precondition).await), 409);
    assert_eq!(api.get("cm").await.unwrap().data.unwrap()["a"], "2");
}

#[tokio::test]
async fn merge_and_json_patches() {
    let server = ApiServer::new();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("cm"))
        .await
        .unwrap();

    let merge =
        json!({"metadata": {"labels": {"x": "1", "y": "2"}}, "data": {"a": null, "b": "2"}});
    let cm = api
        .patch("cm", &PatchParams::default(), &Patch::Merge(&merge))
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap(),
        [("b".to_string(), "2".to_string())].into()
    );
    assert_eq!(cm.metadata.labels.unwrap().len(), 2);

    // Strategic merge is treated as a merge patch.
    let strategic = json!({"metadata": {"labels": {"y": null}}});
    let cm = api
        .patch("cm", &PatchParams::default(), &Patch::Strategic(&strategic))
        .await
        .unwrap();
    assert_eq!(cm.metadata.labels.unwrap().len(), 1);

    let ops = json!([
        {"op": "test", "path": "/data/b", "value": "2"},
        {"op": "replace", "path": "/data/b", "value": "3"},
        {"op": "add", "path": "/metadata/annotations", "value": {"n~/te": "x"}},
        {"op": "copy", "from": "/data/b", "path": "/data/c"},
        {"op": "move", "from": "/data/c", "path": "/data/d"},
        {"op": "remove", "path": "/metadata/labels/x"},
        {"op": "test", "path": "/metadata/finalizers", "value": null},
    ]);
    let cm = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await
        .unwrap();
    let data = cm.data.unwrap();
    assert_eq!(
        (data["b"].as_str(), data["d"].as_str(), data.get("c")),
        ("3", "3", None)
    );
    assert_eq!(cm.metadata.annotations.unwrap()["n~/te"], "x");
    assert_eq!(cm.metadata.labels, None);

    // A failed `test` rejects the whole patch: 422 Invalid, as the real server answers.
    let ops = json!([
        {"op": "replace", "path": "/data/b", "value": "changed"},
        {"op": "test", "path": "/data/b", "value": "2"},
    ]);
    let failed = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await;
    match failed {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            assert!(status.message.contains("test failed"), "{}", status.message);
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let ops = json!([{"op": "remove", "path": "/data/missing"}]);
    let missing = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(ops).unwrap()),
        )
        .await;
    assert_eq!(code(missing), 422);
    assert_eq!(api.get("cm").await.unwrap().data.unwrap()["b"], "3");
}

#[tokio::test]
async fn server_side_apply_owns_fields() {
    let server = ApiServer::new();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let applied = |data: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": data});

    let no_manager = api
        .patch(
            "cm",
            &PatchParams::default(),
            &Patch::Apply(applied(json!({}))),
        )
        .await;
    assert_eq!(
        code(no_manager),
        422,
        "the real server's answer: PatchOptions invalid"
    );
    let no_kind = api
        .patch(
            "cm",
            &PatchParams::apply("a"),
            &Patch::Apply(json!({"data": {"x": "1"}})),
        )
        .await;
    assert_eq!(code(no_kind), 400);

    // Apply creates.
    let cm = api
        .patch(
            "cm",
            &PatchParams::apply("a"),
            &Patch::Apply(applied(json!({"x": "1", "y": "1"}))),
        )
        .await
        .unwrap();
    assert_eq!(cm.data.as_ref().unwrap().len(), 2);
    let managed = cm.metadata.managed_fields.unwrap();
    assert_eq!(
        (
            managed[0].manager.as_deref(),
            managed[0].operation.as_deref()
        ),
        (Some("a"), Some("Apply"))
    );
    assert_eq!(
        managed[0].fields_v1.as_ref().unwrap().0,
        json!({"f:data": {"f:x": {}, "f:y": {}}})
    );

    // Another manager: same value is shared, a different value conflicts.
    api.patch(
        "cm",
        &PatchParams::apply("b"),
        &Patch::Apply(applied(json!({"x": "1", "z": "1"}))),
    )
    .await
    .unwrap();
    let conflict = api
        .patch(
            "cm",
            &PatchParams::apply("b"),
            &Patch::Apply(applied(json!({"y": "2"}))),
        )
        .await;
    match conflict {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status.message.contains("conflict with \"a\": .data.y"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Force takes y over; b omitting z (owned by b alone) removes it; x stays, a still owns it.
    let cm = api
        .patch(
            "cm",
            &PatchParams::apply("b").force(),
            &Patch::Apply(applied(json!({"y": "2"}))),
        )
        .await
        .unwrap();
    let data = cm.data.unwrap();
    assert_eq!(
        (data["x"].as_str(), data["y"].as_str(), data.get("z")),
        ("1", "2", None)
    );

    // a omits everything: x goes (only a owned it), y stays (b owns it now).
    let cm = api
        .patch(
            "cm",
            &PatchParams::apply("a"),
            &Patch::Apply(applied(json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(
        cm.data.unwrap(),
        [("y".to_string(), "2".to_string())].into()
    );

    // Re-applying the same thing is a no-op.
    let before = api.get("cm").await.unwrap();
    let again = api
        .patch(
            "cm",
            &PatchParams::apply("b"),
            &Patch::Apply(applied(json!({"y": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(again.resource_version(), before.resource_version());
}

#[tokio::test]
async fn finalizers_hold_deletion() {
    let server = ApiServer::new();
    let api: Api<DynamicObject> =
        Api::default_namespaced_with(server.client(), &account_resource());
    let mut object = account("held");
    object.metadata.finalizers = Some(vec!["a/one".into(), "b/two".into()]);
    api.create(&PostParams::default(), &object).await.unwrap();

    let pending = api.delete("held", &DeleteParams::default()).await.unwrap();
    let pending = pending
        .left()
        .expect("still there while finalizers hold it");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(
        pending.metadata.generation,
        Some(2),
        "starting deletion bumps generation"
    );

    let add = json!({"metadata": {"finalizers": ["a/one", "b/two", "c/three"]}});
    assert_eq!(
        code(
            api.patch("held", &PatchParams::default(), &Patch::Merge(&add))
                .await
        ),
        422
    );
    // Deleting again changes nothing.
    assert!(
        api.delete("held", &DeleteParams::default())
            .await
            .unwrap()
            .is_left()
    );

    let ops = json!([{"op": "test", "path": "/metadata/finalizers/0", "value": "a/one"},
                     {"op": "remove", "path": "/metadata/finalizers/0"}]);
    let json_patch = Patch::Json::<()>(serde_json::from_value(ops).unwrap());
    api.patch("held", &PatchParams::default(), &json_patch)
        .await
        .unwrap();
    assert!(api.get_opt("held").await.unwrap().is_some());
    let last = json!({"metadata": {"finalizers": null}});
    api.patch("held", &PatchParams::default(), &Patch::Merge(&last))
        .await
        .unwrap();
    assert!(
        api.get_opt("held").await.unwrap().is_none(),
        "gone once the finalizers are"
    );
}

#[tokio::test]
async fn owner_references_are_collected() {
    let server = ApiServer::new();
    let client = server.client();
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let one = maps
        .create(&PostParams::default(), &config_map("one"))
        .await
        .unwrap();
    let two = maps
        .create(&PostParams::default(), &config_map("two"))
        .await
        .unwrap();

    let owned = |name: &str, owners: Vec<&ConfigMap>| {
        let mut s = secret(name, json!({}));
        s.metadata.owner_references = Some(
            owners
                .iter()
                .map(|o| o.controller_owner_ref(&()).unwrap())
                .collect(),
        );
        s
    };
    secrets
        .create(&PostParams::default(), &owned("only-one", vec![&one]))
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &owned("both", vec![&one, &two]))
        .await
        .unwrap();
    let mut held = owned("held", vec![&one]);
    held.metadata.finalizers = Some(vec!["x/hold".into()]);
    secrets.create(&PostParams::default(), &held).await.unwrap();

    maps.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(secrets.get_opt("only-one").await.unwrap().is_none());
    let both = secrets.get("both").await.unwrap();
    assert_eq!(
        both.owner_references().len(),
        1,
        "the dangling reference is dropped"
    );
    assert_eq!(both.owner_references()[0].uid, two.uid().unwrap());
    let held = secrets.get("held").await.unwrap();
    assert!(
        held.metadata.deletion_timestamp.is_some(),
        "collected, but finalizers hold it"
    );
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let server = ApiServer::new();
    let client = server.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let ns = namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Active"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "team");
    secrets
        .create(&PostParams::default(), &secret("s", json!({})))
        .await
        .unwrap();
    let mut held = secret("held", json!({}));
    held.metadata.finalizers = Some(vec!["x/hold".into()]);
    secrets.create(&PostParams::default(), &held).await.unwrap();

    let terminating = namespaces
        .delete("team", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = terminating.left().expect("kept while content is held");
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    assert_eq!(
        code(
            secrets
                .create(&PostParams::default(), &secret("new", json!({})))
                .await
        ),
        403
    );
    assert!(secrets.get_opt("s").await.unwrap().is_none());

    let release = json!({"metadata": {"finalizers": null}});
    secrets
        .patch("held", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert!(namespaces.get_opt("team").await.unwrap().is_none());
    assert!(server.objects("", "secrets", Some("team")).is_empty());
}

#[tokio::test]
async fn selectors_and_paging() {
    let server = ApiServer::new();
    let api: Api<Secret> = Api::default_namespaced(server.client());
    for (name, labels) in [
        ("a", json!({"app": "x", "tier": "web"})),
        ("b", json!({"app": "y", "tier": "db"})),
        ("c", json!({"app": "x"})),
        ("d", json!({})),
    ] {
        api.create(&PostParams::default(), &secret(name, labels))
            .await
            .unwrap();
    }
    let names = |selector: &'static str| {
        let api = api.clone();
        async move {
            let list = api
                .list(&ListParams::default().labels(selector))
                .await
                .unwrap();
            list.items
                .iter()
                .map(|s| s.name_any())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("app=x").await, "a,c");
    assert_eq!(names("app==x,tier").await, "a");
    assert_eq!(names("app!=x").await, "b,d");
    assert_eq!(names("app in (x, y),!tier").await, "c");
    assert_eq!(names("app notin (x)").await, "b,d");
    assert_eq!(names("tier").await, "a,b");
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);
    let bad = api
        .list(&ListParams::default().fields("spec.nodeName=x"))
        .await;
    assert_eq!(code(bad), 400);

    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(3);
    loop {
        let page = api.list(&params).await.unwrap();
        seen.extend(page.items.iter().map(|s| s.name_any()));
        match page.metadata.continue_ {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn watch_follows_label_selector() {
    let server = ApiServer::new();
    let api: Api<Secret> = Api::default_namespaced(server.client());
    api.create(
        &PostParams::default(),
        &secret("before", json!({"app": "x"})),
    )
    .await
    .unwrap();
    let rv = server.resource_version().to_string();
    let params = WatchParams::default().labels("app=x");
    let mut events = api.watch(&params, &rv).await.unwrap().boxed();

    api.create(&PostParams::default(), &secret("s", json!({"app": "x"})))
        .await
        .unwrap();
    api.create(
        &PostParams::default(),
        &secret("other", json!({"app": "y"})),
    )
    .await
    .unwrap();
    let relabel = |app: &str| json!({"metadata": {"labels": {"app": app}}});
    api.patch("s", &PatchParams::default(), &Patch::Merge(&relabel("y")))
        .await
        .unwrap();
    api.patch("s", &PatchParams::default(), &Patch::Merge(&relabel("x")))
        .await
        .unwrap();
    api.delete("s", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(TIMEOUT, events.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match event {
            WatchEvent::Added(s) => seen.push(format!("ADDED {}", s.name_any())),
            WatchEvent::Modified(s) => seen.push(format!("MODIFIED {}", s.name_any())),
            WatchEvent::Deleted(s) => seen.push(format!("DELETED {}", s.name_any())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    // Leaving the selector is a DELETED for this watch, coming back an ADDED.
    assert_eq!(seen, ["ADDED s", "DELETED s", "ADDED s", "DELETED s"]);
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    let server = ApiServer::new();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("early"))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();

    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(cm) if cm.name_any() == "early"));
    assert!(matches!(next().await, watcher::Event::InitDone));

    api.create(&PostParams::default(), &config_map("late"))
        .await
        .unwrap();
    assert!(matches!(next().await, watcher::Event::Apply(cm) if cm.name_any() == "late"));
    let patch = json!({"data": {"a": "2"}});
    api.patch("late", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert!(
        matches!(next().await, watcher::Event::Apply(cm) if cm.data.as_ref().unwrap()["a"] == "2")
    );
    api.delete("early", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(cm) if cm.name_any() == "early"));

    // Streaming lists: a watch with sendInitialEvents, ended by the annotated bookmark.
    let config = watcher::Config::default().streaming_lists();
    let mut stream = watcher(api.clone(), config).boxed();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(cm) if cm.name_any() == "late"));
    assert!(matches!(next().await, watcher::Event::InitDone));
}

#[tokio::test]
async fn reflector_store_catches_up() {
    let server = ApiServer::new();
    let api: Api<Secret> = Api::all(server.client());
    let secrets: Api<Secret> = Api::default_namespaced(server.client());
    secrets
        .create(&PostParams::default(), &secret("one", json!({})))
        .await
        .unwrap();

    let (store, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default()));
    let task = tokio::spawn(stream.for_each(|_| async {}));
    tokio::time::timeout(TIMEOUT, store.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.state().len(), 1);

    for name in ["two", "three"] {
        secrets
            .create(&PostParams::default(), &secret(name, json!({})))
            .await
            .unwrap();
    }
    secrets
        .delete("one", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the store to hold two and three", || {
        let mut names: Vec<String> = store.state().iter().map(|s| s.name_any()).collect();
        names.sort();
        names == ["three", "two"]
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn metadata_only_requests() {
    let server = ApiServer::new();
    let api: Api<Secret> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &secret("s", json!({"app": "x"})))
        .await
        .unwrap();

    let meta = api.get_metadata("s").await.unwrap();
    assert_eq!(meta.types.unwrap().kind, "PartialObjectMetadata");
    assert_eq!(meta.metadata.labels.unwrap()["app"], "x");
    let list = api.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(list.types.kind, "PartialObjectMetadataList");
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("s"));

    // kube 5's metadata watch: `metadata_watcher` is deprecated for `Api<PartialObjectMeta<K>>`.
    let meta_api: Api<PartialObjectMeta<Secret>> = Api::default_namespaced(server.client());
    let mut stream = watcher(meta_api, watcher::Config::default().labels("app=x")).boxed();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(matches!(next().await, watcher::Event::InitApply(m) if m.name_any() == "s"));
    assert!(matches!(next().await, watcher::Event::InitDone));
    api.create(&PostParams::default(), &secret("t", json!({"app": "x"})))
        .await
        .unwrap();
    match next().await {
        watcher::Event::Apply(m) => {
            assert_eq!(m.types.as_ref().unwrap().api_version, "meta.k8s.io/v1");
            assert_eq!(m.name_any(), "t");
        }
        other => panic!("expected Apply, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_resource_version_is_gone() {
    let server = ApiServer::new();
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("a"))
        .await
        .unwrap();
    let old = server.resource_version().to_string();
    api.create(&PostParams::default(), &config_map("b"))
        .await
        .unwrap();

    // Within the history: the missed change is replayed.
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(TIMEOUT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(first, WatchEvent::Added(cm) if cm.name_any() == "b"));

    server.compact();
    let mut events = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(TIMEOUT, events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Error(status) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected a 410, got {other:?}"),
    }

    // kube-runtime's watcher re-lists after a 410. Its watch starts from the list's
    // resourceVersion on the poll after InitDone; compaction happens in between.
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.next())
            .await
            .unwrap()
            .unwrap()
    };
    while !matches!(next().await, Ok(watcher::Event::InitDone)) {}
    let other: Api<ConfigMap> = Api::namespaced(server.client(), "kube-system");
    other
        .create(&PostParams::default(), &config_map("elsewhere"))
        .await
        .unwrap();
    server.compact();
    match next().await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the watcher to see a 410, got {other:?}"),
    }
    assert!(
        matches!(next().await, Ok(watcher::Event::Init)),
        "then it lists again"
    );
}

#[tokio::test]
async fn requests_are_recorded_and_faults_injected() {
    let server = ApiServer::new();
    let client = server.client_as("system:serviceaccount:s2s:operator");
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let accounts: Api<ServiceAccount> = Api::all(client.clone());

    server.fail_next("create", "secrets", 409, 1);
    let error = secrets
        .create(&PostParams::default(), &secret("s", json!({})))
        .await;
    assert_eq!(reason(error), "AlreadyExists");
    secrets
        .create(&PostParams::default(), &secret("s", json!({})))
        .await
        .unwrap();
    server.fail_next("get", "secrets", 500, 2);
    assert_eq!(code(secrets.get("s").await), 500);
    assert_eq!(code(secrets.get("s").await), 500);
    secrets.get("s").await.unwrap();
    accounts.list(&ListParams::default()).await.unwrap();
    let namespaced: Api<ServiceAccount> = Api::default_namespaced(client.clone());
    let status = json!({"status": {"clientId": "x"}});
    let missing = namespaced
        .patch_status("nope", &PatchParams::default(), &Patch::Merge(&status))
        .await;
    assert_eq!(code(missing), 404);
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "leader"}, "spec": {"holderIdentity": "me"}});
    let leases: Api<DynamicObject> = Api::default_namespaced_with(
        client.clone(),
        &ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "coordination.k8s.io",
            "v1",
            "Lease",
        )),
    );
    let apply = PatchParams::apply("operator");
    leases
        .patch("leader", &apply, &Patch::Apply(&lease))
        .await
        .unwrap();
    leases
        .patch("leader", &apply, &Patch::Apply(&lease))
        .await
        .unwrap();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    assert_eq!(
        code(secrets.create(&dry_run, &secret("dry", json!({}))).await),
        400
    );

    let user = "system:serviceaccount:s2s:operator";
    let request = |verb: &str, group: &str, resource: &str, ns: Option<&str>| Request {
        user: user.into(),
        verb: verb.into(),
        group: group.into(),
        resource: resource.into(),
        namespace: ns.map(String::from),
    };
    let default = Some("default");
    assert_eq!(
        server.requests(),
        [
            request("create", "", "secrets", default),
            request("create", "", "secrets", default),
            request("get", "", "secrets", default),
            request("get", "", "secrets", default),
            request("get", "", "secrets", default),
            request("list", "s2s.dev", "serviceaccounts", None),
            request("patch", "s2s.dev", "serviceaccounts/status", default),
            // An apply that creates needs `create` as well as `patch`; one that updates does not.
            request("patch", "coordination.k8s.io", "leases", default),
            request("create", "coordination.k8s.io", "leases", default),
            request("patch", "coordination.k8s.io", "leases", default),
            request("create", "", "secrets", default),
        ]
    );

    // `/version` answers, unrecorded.
    server.clear_requests();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.major, "1");
    assert!(server.requests().is_empty());
}

// A tiny controller over ConfigMaps, on the real kube-runtime Controller: it copies each
// ConfigMap into an owned Secret with server-side apply, marks the ConfigMap with an
// annotation, and counts cleanups behind kube-runtime's finalizer helper (whose JSON patch
// `test` operations the stand-in must honour).

const FINALIZER: &str = "standin.test/cleanup";
const MANAGER: &str = "standin-test";

struct Context {
    client: Client,
    cleanups: AtomicUsize,
}

async fn reconcile(
    cm: Arc<ConfigMap>,
    ctx: Arc<Context>,
) -> Result<Action, finalizer::Error<kube::Error>> {
    let namespace = cm.namespace().unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&maps, FINALIZER, cm, |event| async {
        match event {
            finalizer::Event::Apply(cm) => {
                let name = cm.name_any();
                let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                let copy = json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-copy"), "ownerReferences": [cm.controller_owner_ref(&()).unwrap()]},
                    "stringData": cm.data.clone().unwrap_or_default(),
                });
                let apply = PatchParams::apply(MANAGER).force();
                secrets.patch(&format!("{name}-copy"), &apply, &Patch::Apply(copy)).await?;
                let mark = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": name, "annotations": {"standin.test/copied": "true"}}});
                maps.patch(&name, &apply, &Patch::Apply(mark)).await?;
                Ok(Action::await_change())
            }
            finalizer::Event::Cleanup(_) => {
                ctx.cleanups.fetch_add(1, Ordering::SeqCst);
                Ok(Action::await_change())
            }
        }
    })
    .await
}

#[tokio::test]
async fn controller_with_finalizer_runs_end_to_end() {
    let server = ApiServer::new();
    let client = server.client_as("controller");
    let ctx = Arc::new(Context {
        client: client.clone(),
        cleanups: AtomicUsize::new(0),
    });
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let controller = Controller::new(maps.clone(), watcher::Config::default())
        .owns(secrets.clone(), watcher::Config::default())
        .run(
            reconcile,
            |_, _, _| Action::requeue(Duration::from_millis(100)),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let task = tokio::spawn(controller);

    let user: Api<ConfigMap> = Api::default_namespaced(server.client());
    user.create(&PostParams::default(), &config_map("alpha"))
        .await
        .unwrap();
    let copy = || server.object("", "secrets", Some("default"), "alpha-copy");
    let marked = || {
        server
            .object("", "configmaps", Some("default"), "alpha")
            .is_some_and(|cm| {
                cm["metadata"]["annotations"]["standin.test/copied"] == "true"
                    && cm["metadata"]["finalizers"] == json!([FINALIZER])
            })
    };
    eventually("the copy and the mark", || copy().is_some() && marked()).await;
    let owner = server
        .object("", "configmaps", Some("default"), "alpha")
        .unwrap();
    assert_eq!(
        copy().unwrap()["metadata"]["ownerReferences"][0]["uid"],
        owner["metadata"]["uid"]
    );

    // The controller settles: its second apply is a no-op, so no write storm.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = server.resource_version();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.resource_version(),
        settled,
        "nothing written while nothing changes"
    );

    // Deleting the owned Secret wakes the owner through the `owns` watch.
    user_secrets(&server)
        .delete("alpha-copy", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the copy to come back", || copy().is_some()).await;

    // Deleting the ConfigMap runs cleanup, the finalizer goes, then the object and its copy.
    user.delete("alpha", &DeleteParams::default())
        .await
        .unwrap();
    eventually("alpha and its copy to go", || {
        server
            .object("", "configmaps", Some("default"), "alpha")
            .is_none()
            && copy().is_none()
    })
    .await;
    assert_eq!(ctx.cleanups.load(Ordering::SeqCst), 1);
    task.abort();

    let by_controller: Vec<(String, String)> = server
        .requests()
        .into_iter()
        .filter(|r| r.user == "controller")
        .map(|r| (r.verb, r.resource))
        .collect();
    for expected in [
        ("list", "configmaps"),
        ("watch", "configmaps"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("patch", "configmaps"),
        ("patch", "secrets"),
    ] {
        let expected = (expected.0.to_string(), expected.1.to_string());
        assert!(
            by_controller.contains(&expected),
            "{expected:?} in {by_controller:?}"
        );
    }
}

#[tokio::test]
async fn event_recorder_creates_then_patches_a_series() {
    let server = ApiServer::new();
    let client = server.client();
    let maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = maps
        .create(&PostParams::default(), &config_map("cm"))
        .await
        .unwrap();
    let reporter = Reporter {
        controller: "standin-test".into(),
        instance: None,
    };
    let recorder = Recorder::new(client, reporter);
    let event = KubeEvent {
        type_: EventType::Warning,
        reason: "Broken".into(),
        note: Some("it broke".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    for _ in 0..2 {
        recorder.publish(&event, &cm.object_ref(&())).await.unwrap();
    }
    let events = server.objects("events.k8s.io", "events", Some("default"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Broken");
    assert_eq!(events[0]["series"]["count"], 2);
    let verbs: Vec<String> = server
        .requests()
        .into_iter()
        .map(|r| format!("{} {}/{}", r.verb, r.group, r.resource))
        .collect();
    assert_eq!(
        verbs[1..],
        ["create events.k8s.io/events", "patch events.k8s.io/events"]
    );
}

fn user_secrets(server: &ApiServer) -> Api<Secret> {
    Api::default_namespaced(server.client())
}

#[tokio::test]
async fn resource_metadata_is_what_kube_expects() {
    // The group, version and plural kube derives for our CRD are the ones the stand-in serves.
    let server = ApiServer::new();
    let typed: Api<ServiceAccount> = Api::default_namespaced(server.client());
    assert_eq!(ServiceAccount::plural(&()), "serviceaccounts");
    assert!(
        typed
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
