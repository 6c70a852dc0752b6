//! The token cache: one entry per (audience, sorted scopes), filled by one upstream request
//! at a time (single flight), served until it expires, refreshed in the background at about
//! [`Options::refresh_at`](super::Options::refresh_at) of its lifetime (±5 % jitter so a fleet
//! of pods does not refresh in step).
//!
//! An entry is refreshed ahead of time only while it is used (asked for since its last fetch,
//! or pinned by a `--token` file); an unused one is left to expire and then dropped, so the
//! application's choice of audiences cannot grow the work or the memory without bound.
//! Failures back off exponentially (100 ms … 10 s); a request that finds no usable token
//! keeps trying for [`Tokens::retry_for`] before it answers with the last error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hyper::body::Bytes;

use super::credentials::{CredentialsError, Source};
use super::metrics::Metrics;
use super::upstream::{Issued, Upstream, UpstreamError};

/// First retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// The refresh point moves by up to this fraction either way.
pub const JITTER: f64 = 0.05;
/// A token with less left than this is not handed out.
pub const MIN_REMAINING: Duration = Duration::from_secs(1);
/// Most distinct (audience, scopes) held at once.
pub const MAX_ENTRIES: usize = 1024;
/// How long a 401 from the token endpoint is retried: credentials may be half-way through a
/// rotation (the new secret on disk a moment before the server knows it).
pub const INVALID_CLIENT_RETRY: Duration = Duration::from_secs(2);

/// What a token is for: an audience and a sorted, de-duplicated scope list.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The audience.
    pub audience: String,
    /// The scopes, sorted.
    pub scopes: Vec<String>,
}

impl Key {
    /// A key; scopes in any order, duplicates and empty ones ignored.
    pub fn new(audience: impl Into<String>, scopes: impl IntoIterator<Item = String>) -> Self {
        let mut scopes: Vec<String> = scopes.into_iter().filter(|s| !s.is_empty()).collect();
        scopes.sort();
        scopes.dedup();
        Key {
            audience: audience.into(),
            scopes,
        }
    }
}

/// When a token fetched with `lifetime` should be refreshed: `fraction` of it, moved by
/// `jitter` (in -1 … 1) times [`JITTER`], never later than 95 %.
pub fn refresh_after(lifetime: Duration, fraction: f64, jitter: f64) -> Duration {
    let f = (fraction * (1.0 + JITTER * jitter.clamp(-1.0, 1.0))).clamp(0.0, 0.95);
    lifetime.mul_f64(f)
}

/// The next retry delay after `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(BACKOFF_MIN, BACKOFF_MAX)
}

/// A uniformly random number in -1 … 1 (for jitter, not for secrets).
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.0;
    }
    (u64::from_le_bytes(b) as f64 / u64::MAX as f64) * 2.0 - 1.0
}

/// A cached token.
#[derive(Clone, Debug)]
struct Cached {
    issued: Issued,
    expires: Instant,
    refresh: Instant,
}

impl Cached {
    fn usable(&self, now: Instant) -> bool {
        self.expires.saturating_duration_since(now) >= MIN_REMAINING
    }

    /// The token with `expires_in` counted down to `now`.
    fn served(&self, now: Instant) -> Issued {
        Issued {
            expires_in: self.expires.saturating_duration_since(now).as_secs(),
            ..self.issued.clone()
        }
    }
}

#[derive(Debug)]
struct State {
    cached: Option<Cached>,
    /// Asked for since the last fetch.
    used: bool,
    /// Kept fresh for a token file, used or not.
    pinned: bool,
    backoff: Duration,
    next_try: Instant,
}

#[derive(Debug)]
struct Entry {
    state: Mutex<State>,
    /// Held by whoever is asking the token endpoint for this key.
    flight: Arc<tokio::sync::Mutex<()>>,
}

/// Why no token can be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint's answer.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The credentials cannot be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Too many distinct (audience, scopes) in use.
    #[error("too many distinct audience and scope combinations in use (at most {MAX_ENTRIES})")]
    TooMany,
}

impl TokenError {
    /// What the application gets: status and JSON body.
    pub fn answer(&self) -> (u16, Bytes) {
        let own = |status: u16, error: &str, description: String| {
            let body = serde_json::json!({"error": error, "error_description": description});
            (status, Bytes::from(body.to_string()))
        };
        match self {
            TokenError::Upstream(UpstreamError::Refused { status, body }) => {
                (*status, body.clone())
            }
            TokenError::Upstream(UpstreamError::Failed {
                status,
                body: Some(body),
            }) => (*status, body.clone()),
            TokenError::Upstream(e) => own(503, "temporarily_unavailable", e.to_string()),
            TokenError::Credentials(e) => own(503, "temporarily_unavailable", e.to_string()),
            TokenError::TooMany => own(503, "temporarily_unavailable", self.to_string()),
        }
    }

    fn transient(&self, started: Instant, now: Instant) -> bool {
        match self {
            TokenError::Upstream(UpstreamError::Refused { status: 401, .. }) => {
                now.duration_since(started) < INVALID_CLIENT_RETRY
            }
            TokenError::Upstream(e) => e.transient(),
            TokenError::Credentials(_) => true,
            TokenError::TooMany => false,
        }
    }
}

/// The cache and everything needed to fill it.
#[derive(Debug)]
pub struct Tokens {
    source: Source,
    upstream: Upstream,
    metrics: Arc<Metrics>,
    refresh_at: f64,
    /// How long a request with no usable token keeps retrying.
    pub retry_for: Duration,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
}

impl Tokens {
    /// An empty cache.
    pub fn new(
        source: Source,
        upstream: Upstream,
        metrics: Arc<Metrics>,
        refresh_at: f64,
        retry_for: Duration,
    ) -> Self {
        Tokens {
            source,
            upstream,
            metrics,
            refresh_at,
            retry_for,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the credentials can be read now (for readiness without a default audience).
    pub fn credentials_readable(&self) -> Result<(), String> {
        self.source.load().map(|_| ()).map_err(|e| e.to_string())
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn entry(&self, key: &Key, pin: bool) -> Result<Arc<Entry>, TokenError> {
        let mut entries = self.entries.lock().expect("not poisoned");
        if let Some(e) = entries.get(key) {
            if pin {
                e.state.lock().expect("not poisoned").pinned = true;
            }
            return Ok(e.clone());
        }
        if entries.len() >= MAX_ENTRIES {
            evict(&mut entries, Instant::now());
            if entries.len() >= MAX_ENTRIES {
                return Err(TokenError::TooMany);
            }
        }
        let e = Arc::new(Entry {
            state: Mutex::new(State {
                cached: None,
                used: false,
                pinned: pin,
                backoff: Duration::ZERO,
                next_try: Instant::now(),
            }),
            flight: Arc::new(tokio::sync::Mutex::new(())),
        });
        entries.insert(key.clone(), e.clone());
        Ok(e)
    }

    /// A token for `key`: from the cache when one is usable, else from the token endpoint
    /// (one request for all concurrent askers, retried with backoff). `pin` keeps the key
    /// refreshed even when nobody asks (token files); `count` records a cache hit or miss.
    pub async fn get(&self, key: &Key, pin: bool, count: bool) -> Result<Issued, TokenError> {
        let entry = self.entry(key, pin)?;
        if let Some(t) = self.cached(&entry, true) {
            if count {
                self.metrics.cache.with_label_values(&["hit"]).inc();
            }
            return Ok(t);
        }
        let _flight = entry.flight.lock().await;
        // Whoever held the flight before may have filled it.
        if let Some(t) = self.cached(&entry, true) {
            if count {
                self.metrics.cache.with_label_values(&["hit"]).inc();
            }
            return Ok(t);
        }
        if count {
            self.metrics.cache.with_label_values(&["miss"]).inc();
        }
        let started = Instant::now();
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.fetch(key).await {
                Ok(c) => {
                    let served = c.served(Instant::now());
                    store(&entry, c);
                    return Ok(served);
                }
                Err(e) => {
                    let now = Instant::now();
                    let give_up = started + self.retry_for;
                    if !e.transient(started, now) || now + backoff > give_up {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, retry_in = ?backoff, "token request failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = next_backoff(backoff);
                }
            }
        }
    }

    fn cached(&self, entry: &Entry, mark_used: bool) -> Option<Issued> {
        let now = Instant::now();
        let mut s = entry.state.lock().expect("not poisoned");
        if mark_used {
            s.used = true;
        }
        s.cached
            .as_ref()
            .filter(|c| c.usable(now))
            .map(|c| c.served(now))
    }

    /// One request to the token endpoint with credentials read now.
    async fn fetch(&self, key: &Key) -> Result<Cached, TokenError> {
        let result = self.fetch_inner(key).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(TokenError::Upstream(e)) => e.outcome(),
            Err(TokenError::Credentials(_)) => "credentials_error",
            Err(TokenError::TooMany) => "too_many",
        };
        self.metrics.upstream.with_label_values(&[outcome]).inc();
        result
    }

    async fn fetch_inner(&self, key: &Key) -> Result<Cached, TokenError> {
        let credentials = self.source.load()?;
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let auth = credentials.client_auth(unix)?;
        // Lifetimes count from before the request: never later than the server's.
        let started = Instant::now();
        let issued = self
            .upstream
            .client_credentials(&credentials.token_url, auth, &key.audience, &key.scopes)
            .await?;
        let lifetime = Duration::from_secs(issued.expires_in);
        Ok(Cached {
            expires: started + lifetime,
            refresh: started + refresh_after(lifetime, self.refresh_at, jitter()),
            issued,
        })
    }

    /// Refreshes every used or pinned entry whose refresh time has come and that no one is
    /// fetching, each in its own task; drops entries nobody needs any more.
    pub fn refresh_due(self: &Arc<Self>) {
        let now = Instant::now();
        let due: Vec<(Key, Arc<Entry>)> = {
            let mut entries = self.entries.lock().expect("not poisoned");
            evict(&mut entries, now);
            entries
                .iter()
                .filter(|(_, e)| {
                    let s = e.state.lock().expect("not poisoned");
                    (s.used || s.pinned)
                        && s.next_try <= now
                        && s.cached.as_ref().is_none_or(|c| c.refresh <= now)
                })
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect()
        };
        for (key, entry) in due {
            let Ok(flight) = entry.flight.clone().try_lock_owned() else {
                continue; // someone is fetching it already
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _flight = flight;
                match this.fetch(&key).await {
                    Ok(c) => store(&entry, c),
                    Err(e) => {
                        let mut s = entry.state.lock().expect("not poisoned");
                        s.backoff = next_backoff(s.backoff);
                        s.next_try = Instant::now() + s.backoff;
                        tracing::warn!(error = %e, retry_in = ?s.backoff, "token refresh failed; the cached token is served until it expires");
                    }
                }
            });
        }
    }

    /// Calls [`refresh_due`](Self::refresh_due) every `tick` until `stop` resolves.
    pub async fn run_refresher(self: Arc<Self>, tick: Duration) {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.refresh_due();
        }
    }
}

fn store(entry: &Entry, c: Cached) {
    let mut s = entry.state.lock().expect("not poisoned");
    s.cached = Some(c);
    s.used = false;
    s.backoff = Duration::ZERO;
    s.next_try = Instant::now();
}

/// Drops entries that are neither pinned, nor usable, nor being fetched.
fn evict(entries: &mut HashMap<Key, Arc<Entry>>, now: Instant) {
    entries.retain(|_, e| {
        let s = e.state.lock().expect("not poisoned");
        s.pinned || s.cached.as_ref().is_some_and(|c| c.usable(now)) || e.flight.try_lock().is_err()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_and_dedup_scopes() {
        let a = Key::new(
            "aud",
            ["b".to_owned(), "a".into(), "b".into(), String::new()],
        );
        let b = Key::new("aud", ["a".to_owned(), "b".into()]);
        assert_eq!(a, b);
        assert_eq!(a.scopes, vec!["a", "b"]);
        assert_ne!(a, Key::new("other", ["a".to_owned(), "b".into()]));
    }

    #[test]
    fn refresh_point_is_the_fraction_with_bounded_jitter() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_after(hour, 0.8, 0.0), Duration::from_secs(2880));
        let early = refresh_after(hour, 0.8, -1.0);
        let late = refresh_after(hour, 0.8, 1.0);
        assert_eq!(early, hour.mul_f64(0.76));
        assert_eq!(late, hour.mul_f64(0.84));
        // Out-of-range jitter is clamped; never later than 95 % of the lifetime.
        assert_eq!(refresh_after(hour, 0.8, 7.0), late);
        assert_eq!(refresh_after(hour, 0.99, 1.0), hour.mul_f64(0.95));
        for _ in 0..100 {
            let j = jitter();
            assert!((-1.0..=1.0).contains(&j));
        }
    }

    #[test]
    fn backoff_doubles_from_100ms_to_10s() {
        let mut b = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..10 {
            b = next_backoff(b);
            seen.push(b.as_millis());
        }
        assert_eq!(
            seen,
            vec![100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
    }

    #[test]
    fn expires_in_counts_down_and_almost_expired_tokens_are_not_served() {
        let now = Instant::now();
        let c = Cached {
            issued: Issued {
                access_token: "t".into(),
                token_type: "Bearer".into(),
                expires_in: 60,
                scope: None,
            },
            expires: now + Duration::from_secs(60),
            refresh: now + Duration::from_secs(48),
        };
        assert_eq!(c.served(now + Duration::from_secs(20)).expires_in, 40);
        assert!(c.usable(now + Duration::from_secs(58)));
        assert!(!c.usable(now + Duration::from_millis(59_500)));
    }

    #[test]
    fn refused_requests_pass_the_server_answer_through() {
        let body = Bytes::from_static(br#"{"error":"invalid_scope"}"#);
        let e = TokenError::Upstream(UpstreamError::Refused {
            status: 400,
            body: body.clone(),
        });
        assert_eq!(e.answer(), (400, body));
        let (status, body) = TokenError::Upstream(UpstreamError::Unreachable("x".into())).answer();
        assert_eq!(status, 503);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "temporarily_unavailable");
    }
}
