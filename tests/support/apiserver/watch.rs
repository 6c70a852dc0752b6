//! Watches: newline-delimited `{"type":…,"object":…}` events on a response that stays open
//! until `timeoutSeconds` passes or the client goes away.
//!
//! As the real server: no resourceVersion (or `"0"`) starts with synthetic ADDED events for
//! what exists; a resourceVersion replays the changes after it from the history, or answers
//! an ERROR event with a 410 `Expired` Status when the history no longer reaches back that far
//! (in the stream, which is what makes kube-runtime's watcher re-list); `sendInitialEvents`
//! ends the initial events with a BOOKMARK annotated `k8s.io/initial-events-end`; with
//! `allowWatchBookmarks` a BOOKMARK comes at the start and every second. A change that makes
//! an object start or stop matching the selector arrives as ADDED or DELETED.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::kinds::Kind;
use super::partial;
use super::select::Selector;
use super::store::{Change, ChangeType, State};

const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Watch {
    pub kind: usize,
    pub info: Kind,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub bookmarks: bool,
    pub initial_events: bool,
    pub timeout: Duration,
    pub metadata_only: bool,
}

/// Starts a watch; its lines arrive on the returned channel.
pub(super) fn start(
    state: &State,
    watch: Watch,
    resource_version: Option<&str>,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let from = match resource_version.filter(|rv| !rv.is_empty() && *rv != "0") {
        None => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    // Subscribing under the state lock: nothing written after `now` can be missed.
    let changes = state.changes.subscribe();
    let now = state.rv;
    let mut first = Vec::new();
    let mut expired = false;
    match from {
        Some(rv) if !watch.initial_events && rv < state.compacted => {
            let message = format!("too old resource version: {rv} ({})", state.compacted);
            first.push(error_line(&ApiError::new(410, "Expired", message)));
            expired = true;
        }
        Some(rv) if !watch.initial_events => {
            for change in state.history.iter().filter(|c| c.rv > rv) {
                first.extend(watch.translate(change));
            }
        }
        _ => {
            let namespace = watch.namespace.as_deref();
            for (_, object) in state.matching(watch.kind, namespace, &watch.selector) {
                first.push(watch.line("ADDED", object));
            }
            if watch.initial_events {
                first.push(watch.bookmark(now, true));
            }
        }
    }
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(watch.run(tx, first, expired, changes, now));
    Ok(rx)
}

impl Watch {
    async fn run(
        self,
        tx: mpsc::Sender<Bytes>,
        first: Vec<Bytes>,
        expired: bool,
        mut changes: broadcast::Receiver<Arc<Change>>,
        start: u64,
    ) {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let mut last = start;
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick() => {
                    // Also how a watch nobody reads any more notices it is gone.
                    if tx.is_closed() {
                        return;
                    }
                    if !self.bookmarks {
                        continue;
                    }
                    self.bookmark(last, false)
                }
                change = changes.recv() => match change {
                    Ok(change) if change.rv <= start => continue,
                    Ok(change) => {
                        last = change.rv;
                        match self.translate(&change) {
                            Some(line) => line,
                            None => continue,
                        }
                    }
                    // Too slow a reader: the real server drops it too, and it re-lists.
                    Err(RecvError::Lagged(_)) => {
                        let error = ApiError::new(410, "Expired", "the watch fell too far behind");
                        let _ = tx.send(error_line(&error)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && self.selector.matches(object)
    }

    /// The event this watch sees for a change, if any.
    fn translate(&self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|old| self.matches(old));
        let kind = match (change.change, before, now) {
            (ChangeType::Added, _, true) => "ADDED",
            (ChangeType::Modified, true, true) => "MODIFIED",
            (ChangeType::Modified, false, true) => "ADDED",
            (ChangeType::Modified, true, false) => "DELETED",
            (ChangeType::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(self.line(kind, &change.object))
    }

    fn line(&self, kind: &str, object: &Value) -> Bytes {
        let object = if self.metadata_only {
            partial(object.clone())
        } else {
            object.clone()
        };
        to_line(&json!({"type": kind, "object": object}))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let (api_version, kind) = if self.metadata_only {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadata".to_string(),
            )
        } else {
            (self.info.api_version(), self.info.kind.clone())
        };
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({"apiVersion": api_version, "kind": kind, "metadata": metadata});
        to_line(&json!({"type": "BOOKMARK", "object": object}))
    }
}

fn error_line(error: &ApiError) -> Bytes {
    to_line(&json!({"type": "ERROR", "object": error.to_status()}))
}

fn to_line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).expect("JSON serializes");
    bytes.push(b'\n');
    Bytes::from(bytes)
}
