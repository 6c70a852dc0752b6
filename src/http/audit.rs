//! The audit trail: one JSON line per token-endpoint, introspection and revocation request —
//! what was issued to whom, what was refused and why — on a stream of its own (stdout, or a
//! file), apart from the diagnostic log on stderr.
//!
//! A record names the client, the subject, audiences, scopes, grant type, tenant, the actor
//! chain and the token id, the outcome and the RFC 6749 error code, and the source address:
//! never a secret, an assertion or a token (tokens are identified by `jti` only). Records are
//! queued in memory and written out by one thread every 50 ms, so a request pays for building
//! its line and a short lock, not for a write; past 8 MiB queued a request writes the queue
//! itself, so records are never dropped.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::token::AccessClaims;

/// Where audit records go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Nowhere.
    Off,
    /// Standard output (the diagnostic log is on stderr).
    Stdout,
    /// Standard error, between log lines.
    Stderr,
    /// Appended to a file.
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" | "off" => Target::Off,
            "stdout" | "-" => Target::Stdout,
            "stderr" => Target::Stderr,
            path => Target::File(PathBuf::from(path)),
        })
    }
}

/// One audit record.
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct Record<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    /// `token`, `introspect` or `revoke`.
    pub endpoint: &'a str,
    /// `issued`, `exchanged`, `refused`, `active`, `inactive` or `revoked`.
    pub outcome: &'a str,
    /// The RFC 6749 error code of a refusal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// The grant type asked for (token endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_type: Option<&'a str>,
    /// The client that called (as claimed when the call was refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    /// The token's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// The token's audiences (asked for, when refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<&'a str>,
    /// The token's scopes (asked for, when refused).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<&'a str>,
    /// The tenant the token stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// RFC 8693 `act`: who acts for the subject, prior actors nested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<&'a Value>,
    /// The token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<&'a str>,
    /// The token's expiry (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// The TokenGrants that allowed it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<&'a str>,
    /// The peer address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<IpAddr>,
}

impl<'a> Record<'a> {
    /// A record stamped now.
    pub fn new(endpoint: &'a str, outcome: &'a str) -> Self {
        let time = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Record {
            time,
            endpoint,
            outcome,
            ..Default::default()
        }
    }

    /// The fields a token's claims give.
    pub fn with_claims(mut self, c: &'a AccessClaims) -> Self {
        self.client_id = Some(&c.client_id);
        self.subject = Some(&c.sub);
        self.audiences = c.aud.iter().collect();
        self.scopes = c
            .scope
            .as_deref()
            .map(|s| s.split(' ').collect())
            .unwrap_or_default();
        self.tenant = c.tenant.as_deref();
        self.act = c.act.as_ref();
        self.jti = Some(&c.jti);
        self.exp = Some(c.exp);
        self.grants = c.grants.iter().map(String::as_str).collect();
        self
    }
}

/// How often queued records are written out.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// Queued bytes past which a request writes the queue out itself instead of waiting for the
/// writer: records are never dropped, and memory stays bounded.
const MAX_QUEUED: usize = 8 << 20;

/// The audit sink: records are appended to a shared buffer (a short lock, no wake-up of
/// another thread per record) that a writer thread writes out every 50 ms.
#[derive(Default)]
pub struct Audit {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Inner {
    fn flush(&self) {
        let batch = std::mem::take(&mut *self.queue.lock().expect("not poisoned"));
        if batch.is_empty() {
            return;
        }
        let mut out = self.out.lock().expect("not poisoned");
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

impl Audit {
    /// A sink writing to `target` (the file is opened for appending now).
    pub fn new(target: &Target) -> std::io::Result<Self> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(Audit::default()),
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        let inner = Arc::new(Inner {
            queue: Mutex::new(Vec::with_capacity(64 << 10)),
            out: Mutex::new(out),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("s2s-audit".into())
            .spawn(move || {
                // Ends once the sink is dropped, after a last write.
                while let Some(inner) = weak.upgrade() {
                    inner.flush();
                    drop(inner);
                    std::thread::sleep(FLUSH_EVERY);
                }
            })?;
        Ok(Audit { inner: Some(inner) })
    }

    /// Whether records go anywhere.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues one record (built only when the trail is on).
    pub fn record<'a>(&self, build: impl FnOnce() -> Record<'a>) {
        let Some(inner) = &self.inner else {
            return;
        };
        // Built outside the lock, so replicas' worker threads do not queue on it.
        let mut line = serde_json::to_vec(&build()).expect("a record serializes");
        line.push(b'\n');
        let full = {
            let mut q = inner.queue.lock().expect("not poisoned");
            q.extend_from_slice(&line);
            q.len() >= MAX_QUEUED
        };
        if full {
            inner.flush();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Some(inner) = &self.inner {
            inner.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!("off".parse::<Target>().unwrap(), Target::Off);
        assert_eq!("stdout".parse::<Target>().unwrap(), Target::Stdout);
        assert_eq!("stderr".parse::<Target>().unwrap(), Target::Stderr);
        assert_eq!(
            "/var/log/s2s.jsonl".parse::<Target>().unwrap(),
            Target::File("/var/log/s2s.jsonl".into())
        );
    }

    #[test]
    fn records_are_one_json_line_with_what_the_claims_say() {
        let claims = AccessClaims {
            iss: "https://i".into(),
            sub: "sub-1".into(),
            aud: "https://orders".into(),
            exp: 2,
            iat: 1,
            nbf: 1,
            jti: "j-1".into(),
            client_id: "c-1".into(),
            scope: Some("a b".into()),
            tenant: Some("acme".into()),
            act: Some(serde_json::json!({"sub": "svc"})),
            grants: vec!["ns/g/uid".into()],
        };
        let r = Record::new("token", "issued").with_claims(&claims);
        let v: Value = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["client_id"], "c-1");
        assert_eq!(v["audiences"], serde_json::json!(["https://orders"]));
        assert_eq!(v["scopes"], serde_json::json!(["a", "b"]));
        assert_eq!(v["act"]["sub"], "svc");
        assert_eq!(v["jti"], "j-1");
        assert!(v.get("error").is_none());
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}
