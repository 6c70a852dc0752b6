//! The key cache and its runner, shared by the token server, `dev` and the controller.
//!
//! Per TrustedIssuer it keeps the last good keys and when they were fetched, the last error,
//! and when to fetch next (`refreshInterval`, sooner with backoff after a failure). Keys are
//! kept while fetches fail, until `maxKeyAge` after the last success; then they are dropped
//! and the issuer accepts nothing until a fetch succeeds. An unknown `kid` asks for one
//! early fetch, at most once per issuer per [`UNKNOWN_KID_INTERVAL`]; the request path never
//! waits for it (it helps the next request).
//!
//! After every change (TrustedIssuers added, changed or deleted, keys fetched or aged out)
//! a new [`Issuers`] snapshot is published on a `watch` channel. The decisions are pure
//! functions of the state and an injected [`Clock`]; only [`IssuerCache::refresh_due`] and
//! [`IssuerCache::refresh`] do I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use kube::ResourceExt;
use tokio::sync::{Notify, watch};

use super::fetch::{Fetched, Fetcher};
use super::resolve::{InvalidSpec, Resolved, Source, resolve};
use super::verify::{IssuerKeys, Issuers};
use crate::api::TrustedIssuer;
use crate::api::conditions::reasons;
use crate::api::trusted_issuer::TrustedIssuerSpec;
use crate::crypto::Jwk;
use crate::token::Clock;

/// At most one fetch requested by an unknown `kid` per issuer in this interval.
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(30);
/// First retry after a failed fetch; doubles up to [`MAX_RETRY`] (and never beyond the
/// refresh interval).
pub const FIRST_RETRY: Duration = Duration::from_secs(15);
/// Longest wait between retries of a failing issuer.
pub const MAX_RETRY: Duration = Duration::from_secs(300);
/// Longest the runner sleeps without looking at the clock again.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// What the status of one TrustedIssuer should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerStatus {
    /// The resolved `iss` (the first one for Azure), once known.
    pub issuer: Option<String>,
    /// The resolved JWKS URL, once known.
    pub jwks_uri: Option<String>,
    /// How many keys are in force.
    pub key_count: usize,
    /// Their `kid`s.
    pub key_ids: Vec<String>,
    /// When keys were last fetched successfully.
    pub last_fetch_time: Option<SystemTime>,
    /// The last fetch error, cleared by a successful fetch.
    pub last_error: Option<String>,
    /// Whether tokens of this issuer can be verified with fresh keys.
    pub ready: bool,
    /// One of [`reasons`]: `Ready`, `Pending`, `FetchFailed`, `InvalidSpec`.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// The last good keys of an issuer.
#[derive(Clone, Debug)]
struct Good {
    keys: Vec<Jwk>,
    at: SystemTime,
    issuer: Option<String>,
    jwks_uri: Option<String>,
    skipped: usize,
}

#[derive(Debug)]
struct Entry {
    spec: TrustedIssuerSpec,
    /// Bumped whenever the spec changes, so a fetch started for an older spec is dropped.
    version: u64,
    resolved: Result<Resolved, InvalidSpec>,
    good: Option<Good>,
    last_error: Option<String>,
    failures: u32,
    next_fetch: SystemTime,
    last_kid_refetch: Option<SystemTime>,
    in_flight: bool,
    /// Successful fetches so far: a snapshot is published when it changes.
    fetches: u64,
}

impl Entry {
    fn new(
        namespace: &str,
        name: &str,
        spec: &TrustedIssuerSpec,
        version: u64,
        now: SystemTime,
    ) -> Self {
        let resolved = resolve(namespace, name, spec);
        // Inline keys need no fetch: they are in force at once and never age.
        let good = match &resolved {
            Ok(Resolved {
                source: Source::Inline(keys),
                config,
                ..
            }) => {
                let (keys, skipped) = super::verify::usable_keys(keys);
                Some(Good {
                    keys,
                    at: now,
                    issuer: config.issuers.first().cloned(),
                    jwks_uri: None,
                    skipped,
                })
            }
            _ => None,
        };
        Entry {
            spec: spec.clone(),
            version,
            resolved,
            good,
            last_error: None,
            failures: 0,
            next_fetch: now,
            last_kid_refetch: None,
            in_flight: false,
            fetches: 0,
        }
    }

    /// Remote keys that can be fetched now.
    fn due(&self, now: SystemTime) -> bool {
        !self.in_flight
            && self.next_fetch <= now
            && self.resolved.as_ref().is_ok_and(|r| r.source.is_remote())
    }

    /// The keys in force at `now`: the last good ones unless they aged out.
    fn keys_in_force(&self, now: SystemTime) -> &[Jwk] {
        match (&self.good, &self.resolved) {
            (Some(g), Ok(r)) if !r.source.is_remote() || !aged_out(g.at, r.max_key_age, now) => {
                &g.keys
            }
            _ => &[],
        }
    }

    /// When the keys in force change without a fetch (they age out).
    fn ages_out_at(&self) -> Option<SystemTime> {
        match (&self.good, &self.resolved) {
            (Some(g), Ok(r)) if r.source.is_remote() => Some(g.at + r.max_key_age),
            _ => None,
        }
    }

    fn apply(&mut self, result: Result<Fetched, String>, now: SystemTime) {
        let Ok(resolved) = &self.resolved else { return };
        match result {
            Ok(f) => {
                self.good = Some(Good {
                    issuer: f
                        .issuer
                        .or_else(|| resolved.config.issuers.first().cloned()),
                    jwks_uri: f.jwks_uri.or_else(|| resolved.source.known_jwks_uri()),
                    keys: f.keys,
                    at: now,
                    skipped: f.skipped,
                });
                self.last_error = None;
                self.failures = 0;
                self.fetches += 1;
                self.next_fetch = now + resolved.refresh_interval;
            }
            Err(e) => {
                self.last_error = Some(e);
                let backoff = FIRST_RETRY
                    .saturating_mul(1 << self.failures.min(8))
                    .min(MAX_RETRY)
                    .min(resolved.refresh_interval);
                self.failures = self.failures.saturating_add(1);
                self.next_fetch = now + backoff;
            }
        }
    }

    fn status(&self, now: SystemTime) -> IssuerStatus {
        let resolved = match &self.resolved {
            Ok(r) => r,
            Err(e) => {
                return IssuerStatus {
                    issuer: None,
                    jwks_uri: None,
                    key_count: 0,
                    key_ids: vec![],
                    last_fetch_time: None,
                    last_error: None,
                    ready: false,
                    reason: reasons::INVALID_SPEC,
                    message: e.0.clone(),
                };
            }
        };
        let keys = self.keys_in_force(now);
        let key_ids: Vec<String> = keys.iter().filter_map(|k| k.kid.clone()).take(32).collect();
        let issuer = self
            .good
            .as_ref()
            .and_then(|g| g.issuer.clone())
            .or_else(|| resolved.config.issuers.first().cloned());
        let jwks_uri = self
            .good
            .as_ref()
            .and_then(|g| g.jwks_uri.clone())
            .or_else(|| resolved.source.known_jwks_uri());
        let skipped = self.good.as_ref().map_or(0, |g| g.skipped);
        let skipped_note = if skipped > 0 {
            format!("; {skipped} published key(s) skipped (not usable signing keys)")
        } else {
            String::new()
        };
        let (ready, reason, message) = match (&self.last_error, &self.good) {
            (Some(e), Some(g)) if !keys.is_empty() => (
                false,
                reasons::FETCH_FAILED,
                format!(
                    "{e}; keeping the last good {} key(s) fetched at {} until {} (maxKeyAge)",
                    keys.len(),
                    rfc3339(g.at),
                    rfc3339(g.at + resolved.max_key_age)
                ),
            ),
            (Some(e), Some(g)) => (
                false,
                reasons::FETCH_FAILED,
                format!(
                    "{e}; the keys fetched at {} aged out after maxKeyAge: no token of this issuer is accepted",
                    rfc3339(g.at)
                ),
            ),
            (Some(e), None) => (
                false,
                reasons::FETCH_FAILED,
                format!("{e}; no keys yet: no token of this issuer is accepted"),
            ),
            (None, None) => (false, reasons::PENDING, "keys not fetched yet".to_owned()),
            (None, Some(_)) if keys.is_empty() => (
                false,
                reasons::FETCH_FAILED,
                format!("the issuer publishes no usable signing key{skipped_note}"),
            ),
            (None, Some(_)) => (
                true,
                reasons::READY,
                format!("{} key(s) in use{skipped_note}", keys.len()),
            ),
        };
        IssuerStatus {
            issuer,
            jwks_uri,
            key_count: keys.len(),
            key_ids,
            last_fetch_time: self
                .good
                .as_ref()
                .filter(|_| resolved.source.is_remote())
                .map(|g| g.at),
            last_error: self.last_error.clone(),
            ready,
            reason,
            message,
        }
    }
}

fn aged_out(at: SystemTime, max_age: Duration, now: SystemTime) -> bool {
    now >= at + max_age
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .map(|ts| ts.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

struct Inner {
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    entries: Mutex<BTreeMap<String, Entry>>,
    versions: std::sync::atomic::AtomicU64,
    wake: Notify,
    snapshot: watch::Sender<Arc<Issuers>>,
    /// What the last snapshot held: (key, spec version, successful fetches, keys in force).
    published: Mutex<Vec<(String, u64, u64, usize)>>,
    /// Bumped after every change of any status.
    changes: watch::Sender<u64>,
}

/// The key cache; cheap to clone (shared state).
#[derive(Clone)]
pub struct IssuerCache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for IssuerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerCache").finish_non_exhaustive()
    }
}

impl IssuerCache {
    /// An empty cache.
    pub fn new(fetcher: Fetcher, clock: Arc<dyn Clock>) -> Self {
        IssuerCache {
            inner: Arc::new(Inner {
                fetcher,
                clock,
                entries: Mutex::default(),
                versions: Default::default(),
                wake: Notify::new(),
                snapshot: watch::Sender::new(Arc::new(Issuers::default())),
                published: Mutex::default(),
                changes: watch::Sender::new(0),
            }),
        }
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The current snapshot's channel; a new value arrives after every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Issuers>> {
        self.inner.snapshot.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Issuers> {
        self.inner.snapshot.borrow().clone()
    }

    /// A counter bumped after every change of keys, errors or TrustedIssuers (for status
    /// writers and `dev`'s printing).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Adds or updates one TrustedIssuer (state is kept when its spec did not change).
    /// Returns its key, `namespace/name`. Publishes a snapshot and wakes the runner.
    pub fn upsert(&self, obj: &TrustedIssuer) -> String {
        let key = self.upsert_quiet(obj);
        self.publish();
        self.inner.wake.notify_one();
        key
    }

    fn upsert_quiet(&self, obj: &TrustedIssuer) -> String {
        let namespace = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let key = format!("{namespace}/{name}");
        let now = self.now();
        let mut entries = self.entries();
        if entries.get(&key).is_none_or(|e| e.spec != obj.spec) {
            let version = self
                .inner
                .versions
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            entries.insert(
                key.clone(),
                Entry::new(&namespace, &name, &obj.spec, version, now),
            );
        }
        key
    }

    /// Forgets one TrustedIssuer: the next snapshot (published now) does not have it.
    pub fn remove(&self, key: &str) {
        let removed = self.entries().remove(key).is_some();
        if removed {
            self.publish();
        }
    }

    /// Replaces the whole list of TrustedIssuers: new ones are added, changed ones start
    /// over, deleted ones are dropped (and stop being accepted with the snapshot published
    /// before this returns).
    pub fn set_issuers<'a>(&self, objects: impl IntoIterator<Item = &'a TrustedIssuer>) {
        let mut keep = BTreeSet::new();
        for obj in objects {
            keep.insert(self.upsert_quiet(obj));
        }
        self.entries().retain(|k, _| keep.contains(k));
        self.publish();
        self.inner.wake.notify_one();
    }

    /// Asks for an early fetch of one issuer's keys (a JWT named an unknown `kid`). At most
    /// one per issuer per [`UNKNOWN_KID_INTERVAL`]; returns whether this request was taken.
    /// Never waits: the runner fetches in the background.
    pub fn request_refresh(&self, key: &str) -> bool {
        let now = self.now();
        let taken = {
            let mut entries = self.entries();
            match entries.get_mut(key) {
                Some(e)
                    if e.resolved.as_ref().is_ok_and(|r| r.source.is_remote())
                        && e.last_kid_refetch
                            .is_none_or(|t| now >= t + UNKNOWN_KID_INTERVAL) =>
                {
                    e.last_kid_refetch = Some(now);
                    e.next_fetch = e.next_fetch.min(now);
                    true
                }
                _ => false,
            }
        };
        if taken {
            tracing::debug!(trusted_issuer = key, "unknown kid: fetching keys early");
            self.inner.wake.notify_one();
        }
        taken
    }

    /// A hook for [`crate::token::Core::set_unknown_kid_hook`].
    pub fn unknown_kid_hook(&self) -> Arc<dyn Fn(&str) + Send + Sync> {
        let cache = self.clone();
        Arc::new(move |key: &str| {
            cache.request_refresh(key);
        })
    }

    /// The status of one TrustedIssuer.
    pub fn status(&self, key: &str) -> Option<IssuerStatus> {
        let now = self.now();
        self.entries().get(key).map(|e| e.status(now))
    }

    /// Every TrustedIssuer's status, by key.
    pub fn statuses(&self) -> Vec<(String, IssuerStatus)> {
        let now = self.now();
        self.entries()
            .iter()
            .map(|(k, e)| (k.clone(), e.status(now)))
            .collect()
    }

    /// When this issuer is next fetched (or its keys age out), for a requeue.
    pub fn next_due(&self, key: &str) -> Option<SystemTime> {
        let entries = self.entries();
        let e = entries.get(key)?;
        let remote = e.resolved.as_ref().is_ok_and(|r| r.source.is_remote());
        let fetch = remote.then_some(e.next_fetch);
        [fetch, e.ages_out_at().filter(|t| *t > self.now())]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fetches one issuer's keys if due (or always with `force`), then publishes. Returns
    /// its status. The controller calls this from its reconcile.
    pub async fn refresh(&self, key: &str, force: bool) -> Option<IssuerStatus> {
        let now = self.now();
        let job = {
            let mut entries = self.entries();
            let e = entries.get_mut(key)?;
            let remote = e.resolved.as_ref().is_ok_and(|r| r.source.is_remote());
            if remote && !e.in_flight && (force || e.due(now)) {
                e.in_flight = true;
                e.resolved
                    .as_ref()
                    .ok()
                    .map(|r| (key.to_owned(), e.version, r.source.clone()))
            } else {
                None
            }
        };
        if let Some(job) = job {
            self.run_jobs(vec![job]).await;
        } else {
            self.publish();
        }
        self.status(key)
    }

    /// Fetches every issuer that is due, in parallel, and publishes. Returns when to look
    /// again (the earliest next fetch or aging), if anything is scheduled.
    pub async fn refresh_due(&self) -> Option<SystemTime> {
        let now = self.now();
        let jobs: Vec<_> = {
            let mut entries = self.entries();
            entries
                .iter_mut()
                .filter(|(_, e)| e.due(now))
                .filter_map(|(k, e)| {
                    e.in_flight = true;
                    let source = e.resolved.as_ref().ok()?.source.clone();
                    Some((k.clone(), e.version, source))
                })
                .collect()
        };
        self.run_jobs(jobs).await;
        let now = self.now();
        let entries = self.entries();
        entries
            .values()
            .filter(|e| e.resolved.as_ref().is_ok_and(|r| r.source.is_remote()))
            .flat_map(|e| [Some(e.next_fetch), e.ages_out_at().filter(|t| *t > now)])
            .flatten()
            .min()
    }

    async fn run_jobs(&self, jobs: Vec<(String, u64, Source)>) {
        if jobs.is_empty() {
            self.publish();
            return;
        }
        let fetcher = &self.inner.fetcher;
        let results =
            futures::future::join_all(jobs.into_iter().map(|(key, version, source)| async move {
                let result = fetcher.fetch(&source).await.map_err(|e| e.to_string());
                (key, version, result)
            }))
            .await;
        let now = self.now();
        {
            let mut entries = self.entries();
            for (key, version, result) in results {
                match &result {
                    Ok(f) => tracing::debug!(
                        trusted_issuer = %key,
                        keys = f.keys.len(),
                        skipped = f.skipped,
                        "issuer keys fetched"
                    ),
                    Err(e) => {
                        tracing::warn!(trusted_issuer = %key, error = %e, "cannot fetch issuer keys")
                    }
                }
                if let Some(e) = entries.get_mut(&key)
                    && e.version == version
                {
                    e.in_flight = false;
                    e.apply(result, now);
                }
            }
        }
        self.publish();
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Builds and publishes a snapshot if what it holds changed.
    fn publish(&self) {
        let now = self.now();
        let entries = self.entries();
        let mut fingerprint = Vec::with_capacity(entries.len());
        let mut list = Vec::with_capacity(entries.len());
        for (key, e) in entries.iter() {
            let Ok(resolved) = &e.resolved else {
                fingerprint.push((key.clone(), e.version, 0, 0));
                continue;
            };
            let keys = e.keys_in_force(now).to_vec();
            fingerprint.push((key.clone(), e.version, e.fetches, keys.len()));
            let mut config = resolved.config.clone();
            if resolved.source == Source::Kubernetes {
                // The cluster's issuer is known only from its discovery document.
                config.issuers = e.good.iter().filter_map(|g| g.issuer.clone()).collect();
            }
            list.push((config, IssuerKeys { keys }));
        }
        drop(entries);
        let mut published = self
            .inner
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *published != fingerprint {
            *published = fingerprint;
            self.inner
                .snapshot
                .send_replace(Arc::new(Issuers::new(list)));
            self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Keeps keys fresh until `stop` resolves: fetches what is due, sleeps until the next
    /// deadline, a change of TrustedIssuers or a refresh request.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let work = async {
            loop {
                let next = self.refresh_due().await;
                let now = self.now();
                let sleep = next
                    .map(|t| t.duration_since(now).unwrap_or(Duration::ZERO))
                    .unwrap_or(MAX_SLEEP)
                    .clamp(Duration::from_millis(100), MAX_SLEEP);
                tokio::select! {
                    () = self.inner.wake.notified() => {}
                    () = tokio::time::sleep(sleep) => {}
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = stop => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.0.load(Ordering::SeqCst))
        }
    }

    fn issuer(name: &str, yaml: &str) -> TrustedIssuer {
        let mut ti = TrustedIssuer::new(name, serde_yaml::from_str(yaml).unwrap());
        ti.metadata.namespace = Some("ns".into());
        ti
    }

    #[tokio::test]
    async fn inline_keys_are_in_force_at_once_and_deletion_drops_them() {
        let clock = Arc::new(FakeClock(AtomicU64::new(1_700_000_000)));
        let cache = IssuerCache::new(Fetcher::new(None), clock);
        let jwk = crate::crypto::generate_key(Default::default())
            .unwrap()
            .public_jwk;
        let yaml = format!(
            "issuer: https://idp\naudiences: [a]\njwks: {{keys: [{}]}}\n",
            serde_json::to_string(&jwk).unwrap()
        );
        let bad = issuer("bad", "audiences: [a]\n");
        cache.set_issuers([&issuer("inline", &yaml), &bad]);
        let snap = cache.snapshot();
        assert_eq!(snap.key_count("ns/inline"), 1);
        assert!(snap.config("ns/bad").is_none());
        let s = cache.status("ns/inline").unwrap();
        assert!(s.ready, "{s:?}");
        assert_eq!(s.key_ids, vec![jwk.kid.clone().unwrap()]);
        assert_eq!(s.last_fetch_time, None);
        let s = cache.status("ns/bad").unwrap();
        assert_eq!((s.ready, s.reason), (false, reasons::INVALID_SPEC));
        assert_eq!(cache.refresh_due().await, None);

        cache.set_issuers([&bad]);
        assert!(cache.snapshot().config("ns/inline").is_none());
        assert!(cache.status("ns/inline").is_none());
    }

    #[tokio::test]
    async fn failures_back_off_and_kid_requests_are_rate_limited() {
        let clock = Arc::new(FakeClock(AtomicU64::new(1_700_000_000)));
        let cache = IssuerCache::new(Fetcher::new(None), clock.clone());
        // Nothing listens on port 9 of loopback: the fetch fails fast.
        cache.set_issuers([&issuer(
            "down",
            "issuer: http://127.0.0.1:9\naudiences: [a]\n",
        )]);
        assert_eq!(cache.status("ns/down").unwrap().reason, reasons::PENDING);
        let next = cache.refresh_due().await.unwrap();
        assert_eq!(next, clock.now() + FIRST_RETRY);
        let s = cache.status("ns/down").unwrap();
        assert_eq!(s.reason, reasons::FETCH_FAILED);
        assert!(s.message.contains("no keys yet"), "{}", s.message);

        assert!(cache.request_refresh("ns/down"));
        assert!(!cache.request_refresh("ns/down"));
        clock.0.fetch_add(30, Ordering::SeqCst);
        assert!(cache.request_refresh("ns/down"));
        assert!(!cache.request_refresh("ns/unknown"));
    }
}
