//! Brute-force protection for client authentication, in front of the token core.
//!
//! * **Per client id**: after `client_failures` failed authentications in a row, the client
//!   is locked out for `lock_base`, doubling with every further lockout up to `lock_max`.
//!   While locked, every attempt for it is answered `invalid_client` without looking at the
//!   credentials — the same answer as a wrong secret, so nothing tells whether the client
//!   exists. A success resets its count.
//! * **Per source address**: failed attempts spend a budget of `source_failures` per minute.
//!   A source over budget is refused for client ids that have not authenticated successfully
//!   from it in the last hour, so an address hammering (or spraying) client ids is slowed
//!   while its legitimate clients keep working.
//!
//! State is per process and bounded (`max_entries`; expired entries are evicted first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Failed attempts in a row that lock a client out.
    pub client_failures: u32,
    /// First lockout.
    pub lock_base: Duration,
    /// Longest lockout.
    pub lock_max: Duration,
    /// Failed attempts per minute one source address may make.
    pub source_failures: u32,
    /// Most tracked clients and sources each.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            client_failures: 10,
            lock_base: Duration::from_secs(1),
            lock_max: Duration::from_secs(300),
            source_failures: 100,
            max_entries: 100_000,
        }
    }
}

/// Why an attempt is refused before authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client id is locked out.
    Client,
    /// The source address is over its failure budget.
    Source,
}

#[derive(Debug, Default)]
struct ClientState {
    failures: u32,
    lockouts: u32,
    locked_until: Option<Instant>,
    last_seen: Option<Instant>,
}

#[derive(Debug)]
struct SourceState {
    /// Token bucket of allowed failures.
    budget: f64,
    refilled: Instant,
    /// Client ids that succeeded from here, and when.
    good: HashMap<String, Instant>,
}

/// The limiter.
#[derive(Debug, Default)]
pub struct Limiter {
    limits: Limits,
    clients: Mutex<HashMap<String, ClientState>>,
    sources: Mutex<HashMap<IpAddr, SourceState>>,
}

const GOOD_FOR: Duration = Duration::from_secs(3600);

impl Limiter {
    /// A limiter with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Whether an attempt by `client_id` from `source` may be judged at all.
    pub fn check(
        &self,
        client_id: Option<&str>,
        source: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(id) = client_id {
            let clients = self.clients.lock().expect("not poisoned");
            if clients
                .get(id)
                .and_then(|c| c.locked_until)
                .is_some_and(|until| until > now)
            {
                return Err(Refusal::Client);
            }
        }
        if let Some(ip) = source {
            let mut sources = self.sources.lock().expect("not poisoned");
            if let Some(s) = sources.get_mut(&ip) {
                self.refill(s, now);
                let known_good = client_id
                    .and_then(|id| s.good.get(id))
                    .is_some_and(|t| now.duration_since(*t) < GOOD_FOR);
                if s.budget < 1.0 && !known_good {
                    return Err(Refusal::Source);
                }
            }
        }
        Ok(())
    }

    fn refill(&self, s: &mut SourceState, now: Instant) {
        let per_sec = f64::from(self.limits.source_failures) / 60.0;
        let elapsed = now.duration_since(s.refilled).as_secs_f64();
        s.budget = (s.budget + elapsed * per_sec).min(f64::from(self.limits.source_failures));
        s.refilled = now;
    }

    /// Records a failed authentication. Returns whether it started a lockout.
    pub fn failure(&self, client_id: Option<&str>, source: Option<IpAddr>, now: Instant) -> bool {
        let mut locked = false;
        if let Some(id) = client_id {
            let mut clients = self.clients.lock().expect("not poisoned");
            if clients.len() >= self.limits.max_entries && !clients.contains_key(id) {
                evict_clients(&mut clients, now);
            }
            if clients.len() < self.limits.max_entries || clients.contains_key(id) {
                let c = clients.entry(id.to_owned()).or_default();
                c.last_seen = Some(now);
                c.failures += 1;
                if c.failures >= self.limits.client_failures {
                    let factor = 1u32 << c.lockouts.min(16);
                    let lock = self
                        .limits
                        .lock_base
                        .saturating_mul(factor)
                        .min(self.limits.lock_max);
                    c.locked_until = Some(now + lock);
                    c.lockouts += 1;
                    c.failures = 0;
                    locked = true;
                }
            }
        }
        if let Some(ip) = source {
            let mut sources = self.sources.lock().expect("not poisoned");
            if sources.len() >= self.limits.max_entries && !sources.contains_key(&ip) {
                sources.retain(|_, s| s.budget < f64::from(self.limits.source_failures) - 1.0);
            }
            let full = f64::from(self.limits.source_failures);
            let s = sources.entry(ip).or_insert_with(|| SourceState {
                budget: full,
                refilled: now,
                good: HashMap::new(),
            });
            self.refill(s, now);
            s.budget = (s.budget - 1.0).max(0.0);
        }
        locked
    }

    /// Records a successful authentication: the client's count is reset, and the client is
    /// known good from this source.
    pub fn success(&self, client_id: &str, source: Option<IpAddr>, now: Instant) {
        {
            let mut clients = self.clients.lock().expect("not poisoned");
            if let Some(c) = clients.get_mut(client_id) {
                c.failures = 0;
                // Lockouts keep growing if the failures resume soon; they are forgotten with
                // the entry.
                c.last_seen = Some(now);
            }
        }
        if let Some(ip) = source {
            let mut sources = self.sources.lock().expect("not poisoned");
            if let Some(s) = sources.get_mut(&ip) {
                // The hot path: a known client succeeding again allocates nothing.
                if let Some(t) = s.good.get_mut(client_id) {
                    *t = now;
                    return;
                }
                if s.good.len() >= 1024 {
                    s.good.retain(|_, t| now.duration_since(*t) < GOOD_FOR);
                }
                if s.good.len() < 1024 {
                    s.good.insert(client_id.to_owned(), now);
                }
            } else {
                let full = f64::from(self.limits.source_failures);
                let mut good = HashMap::new();
                good.insert(client_id.to_owned(), now);
                if sources.len() < self.limits.max_entries {
                    sources.insert(
                        ip,
                        SourceState {
                            budget: full,
                            refilled: now,
                            good,
                        },
                    );
                }
            }
        }
    }
}

/// Drops clients that are neither locked nor seen in the last hour.
fn evict_clients(clients: &mut HashMap<String, ClientState>, now: Instant) {
    clients.retain(|_, c| {
        c.locked_until.is_some_and(|u| u > now)
            || c.last_seen
                .is_some_and(|t| now.duration_since(t) < GOOD_FOR)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            client_failures: 3,
            lock_base: Duration::from_secs(1),
            lock_max: Duration::from_secs(4),
            source_failures: 10,
            max_entries: 1000,
        }
    }

    #[test]
    fn a_client_is_locked_after_failures_for_a_growing_time() {
        let l = Limiter::new(limits());
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(!l.failure(Some("x"), None, t0));
        }
        assert!(l.failure(Some("x"), None, t0), "third failure locks");
        assert_eq!(l.check(Some("x"), None, t0), Err(Refusal::Client));
        assert_eq!(l.check(Some("y"), None, t0), Ok(()), "others unaffected");
        let t1 = t0 + Duration::from_millis(1001);
        assert_eq!(l.check(Some("x"), None, t1), Ok(()));
        for _ in 0..3 {
            l.failure(Some("x"), None, t1);
        }
        assert_eq!(
            l.check(Some("x"), None, t1 + Duration::from_millis(1500)),
            Err(Refusal::Client),
            "2 s now"
        );
        assert_eq!(
            l.check(Some("x"), None, t1 + Duration::from_millis(2001)),
            Ok(())
        );
        // Capped at lock_max.
        let mut t = t1 + Duration::from_secs(3);
        for _ in 0..5 {
            for _ in 0..3 {
                l.failure(Some("x"), None, t);
            }
            t += Duration::from_secs(5);
        }
        assert_eq!(
            l.check(Some("x"), None, t - Duration::from_secs(1)),
            Ok(()),
            "never more than 4 s"
        );
        // A success resets the count.
        l.failure(Some("z"), None, t);
        l.failure(Some("z"), None, t);
        l.success("z", None, t);
        l.failure(Some("z"), None, t);
        assert_eq!(l.check(Some("z"), None, t), Ok(()));
    }

    #[test]
    fn a_source_over_budget_is_refused_except_for_its_good_clients() {
        let l = Limiter::new(limits());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        l.success("good", Some(ip), t0);
        for i in 0..10 {
            l.failure(Some(&format!("spray-{i}")), Some(ip), t0);
        }
        assert_eq!(
            l.check(Some("spray-99"), Some(ip), t0),
            Err(Refusal::Source)
        );
        assert_eq!(l.check(None, Some(ip), t0), Err(Refusal::Source));
        assert_eq!(
            l.check(Some("good"), Some(ip), t0),
            Ok(()),
            "known good goes on"
        );
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.check(Some("spray-99"), Some(other), t0), Ok(()));
        // The budget refills: 10 per minute.
        assert_eq!(
            l.check(Some("spray-99"), Some(ip), t0 + Duration::from_secs(7)),
            Ok(())
        );
    }

    #[test]
    fn state_stays_bounded() {
        let l = Limiter::new(Limits {
            max_entries: 100,
            ..limits()
        });
        let t0 = Instant::now();
        for i in 0..1000 {
            l.failure(Some(&format!("c{i}")), None, t0);
        }
        assert!(l.clients.lock().unwrap().len() <= 100);
    }
}
