//! `s2s-operator dev`: the controller's reconcile and the token server in one process, with
//! no cluster. Manifests are read from files; every Secret the controller would create is
//! written as a mounted-Secret tree, `STATE_DIR/<namespace>/<secret-name>/<key>`; statuses,
//! ownership and the signing keys persist under the state dir, so nothing is regenerated on
//! a restart, and so do RFC 7009 revocations (saved before the revoke endpoint answers,
//! dropped once the token has expired). Each TokenGrant gets a uid kept in the state dir as the API server would give
//! one; a grant removed from the manifests loses it, so the tokens that name it are void
//! even if it comes back. Manifests are polled and re-applied when they change, and at least every 30
//! seconds (sooner when a TokenGrant's output token is due for renewal).

mod manifests;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;

pub use manifests::{Manifests, load, parse_text};
use state::StateDir;

use crate::api::conditions::{ConditionStatus, types};
use crate::crypto::KeyAlgorithm;
use crate::http::{self, AppState, RevocationSink};
use crate::k8s::conditions::find;
use crate::service_account::{
    self, Context, Observed, ObservedSecret, RandomGenerator, secret_names,
};
use crate::signing_keys::Policy;
use crate::store;
use crate::token::deny::DenyList;
use crate::token::{Config, Core, KeySet, SystemClock};
use crate::token_grant;
use crate::trusted_issuer::cache::{IssuerCache, IssuerStatus};
use crate::trusted_issuer::fetch::Fetcher;

/// Options of `dev`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Manifest files or folders.
    pub manifests: Vec<PathBuf>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where credentials and state go.
    pub state_dir: PathBuf,
    /// The issuer URL; derived from the listen address when absent.
    pub issuer: Option<String>,
    /// Algorithm of the signing keys.
    pub signing_algorithm: KeyAlgorithm,
    /// Upper bound on token lifetimes.
    pub max_token_lifetime: Duration,
    /// How often the signing key rotates.
    pub key_rotation: Duration,
    /// Let grants name audiences no account claims.
    pub allow_unclaimed_audiences: bool,
    /// How often manifests are checked for changes.
    pub poll_interval: Duration,
    /// Brute-force protection of client authentication.
    pub limits: http::Limits,
    /// Where the audit trail goes.
    pub audit: http::audit::Target,
}

/// What can stop `dev`.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The audit file cannot be opened.
    #[error("audit log: {0}")]
    Audit(String),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The state dir cannot be used.
    #[error("state dir {path}: {source}")]
    State {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signing keys cannot be loaded or made.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// The running world of `dev`.
struct Dev {
    options: Options,
    issuer: String,
    state: StateDir,
    core: Arc<Core>,
    /// TrustedIssuer keys (the same cache and runner as the token server).
    trusted: IssuerCache,
    /// When a TokenGrant's output token is next due, if sooner than the regular re-apply.
    next_due: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What one pass did, for people: one line per account and per grant.
struct Applied {
    accounts: Vec<String>,
    grants: Vec<String>,
}

/// Runs `dev` until Ctrl-C (or `shutdown` resolves).
pub async fn run(
    options: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), DevError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| DevError::Listen {
            addr: options.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| DevError::Listen {
        addr: options.listen,
        source,
    })?;
    let issuer = options
        .issuer
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let issuer = issuer.trim_end_matches('/').to_owned();
    let state = StateDir::open(&options.state_dir).map_err(|source| DevError::State {
        path: options.state_dir.clone(),
        source,
    })?;
    let policy = key_policy(&options);
    let keys = state::load_signing_keys(&state, &policy, now_unix()).map_err(DevError::Keys)?;
    let mut config = Config::new(issuer.clone());
    config.max_token_lifetime = options.max_token_lifetime;
    let core = Arc::new(Core::new(
        config,
        Default::default(),
        keys,
        Arc::new(SystemClock),
    ));
    // No cluster: the kubernetes preset reports FetchFailed.
    let trusted = IssuerCache::new(Fetcher::new(None), Arc::new(SystemClock));
    core.set_unknown_kid_hook(trusted.unknown_kid_hook());
    // Tokens revoked before a restart stay revoked: they are still valid JWTs otherwise.
    let revoked = state
        .revocations(now_unix())
        .map_err(|source| DevError::State {
            path: options.state_dir.clone(),
            source,
        })?;
    core.set_deny_list(DenyList::from_data(&revoked));
    let dev = Arc::new(Dev {
        options,
        issuer,
        state,
        core: core.clone(),
        trusted: trusted.clone(),
        next_due: std::sync::Mutex::new(None),
    });

    let world = load(&dev.options.manifests);
    let summary = dev.apply(&world);
    // Fetch the issuers' keys once before the banner, so it shows what works.
    trusted.refresh_due().await;
    core.set_issuers((*trusted.snapshot()).clone());
    print_banner(&dev, &summary);
    let forwarder = tokio::spawn({
        let mut snapshots = trusted.subscribe();
        let core = core.clone();
        async move {
            loop {
                let snapshot = (**snapshots.borrow_and_update()).clone();
                core.set_issuers(snapshot);
                if snapshots.changed().await.is_err() {
                    break;
                }
            }
        }
    });
    let key_refresh = tokio::spawn(trusted.clone().run(std::future::pending()));
    let audit = http::Audit::new(&dev.options.audit).map_err(|e| DevError::Audit(e.to_string()))?;
    let app = AppState::with(core, dev.options.limits.clone(), audit);
    let sink: Arc<dyn RevocationSink> = Arc::new(StateRevocations {
        state: Arc::new(std::sync::Mutex::new(dev.state.clone())),
    });
    let _ = app.revocation_sink.set(sink);
    app.set_ready(true);

    let poller = tokio::spawn(watch(dev.clone(), world.fingerprint.clone()));
    let served = axum::serve(
        listener,
        http::router(app).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    poller.abort();
    forwarder.abort();
    key_refresh.abort();
    served.map_err(DevError::Serve)
}

/// Revocations go to the state dir before the revoke endpoint answers (RFC 7009 §2.2), as
/// they go to the ConfigMap in a cluster. The mutex serializes the file's read-change-write
/// between concurrent revocations.
struct StateRevocations {
    state: Arc<std::sync::Mutex<StateDir>>,
}

impl RevocationSink for StateRevocations {
    fn revoke(
        &self,
        jti: String,
        exp: u64,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let state = self.state.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let state = state.lock().map_err(|_| "revocations lock poisoned")?;
                state
                    .revoke_jti(&jti, exp, now_unix())
                    .map_err(|e| format!("cannot save the revocation: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    }
}

fn key_policy(o: &Options) -> Policy {
    Policy {
        algorithm: o.signing_algorithm,
        rotate_every: o.key_rotation,
        // One process: the JWKS it serves changes in the same instant, but resource servers
        // cache it for up to a minute.
        publish_ahead: Duration::from_secs(90),
        retire_after: o.max_token_lifetime + Duration::from_secs(60),
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Re-applies manifests when a file changes, and at least every 30 seconds (rotations, grace
/// periods and token renewals run on time, not on edits), sooner when a grant's token is due.
async fn watch(dev: Arc<Dev>, mut fingerprint: String) {
    let mut since_apply = Duration::ZERO;
    loop {
        tokio::time::sleep(dev.options.poll_interval).await;
        since_apply += dev.options.poll_interval;
        let current = manifests::fingerprint(&dev.options.manifests);
        let due = dev
            .next_due
            .lock()
            .expect("not poisoned")
            .is_some_and(|t| std::time::Instant::now() >= t);
        if current != fingerprint || since_apply >= Duration::from_secs(30) || due {
            let changed = current != fingerprint;
            fingerprint = current;
            since_apply = Duration::ZERO;
            let world = load(&dev.options.manifests);
            let summary = dev.apply(&world);
            if changed {
                println!(
                    "manifests changed: {} account(s), {} grant(s) loaded",
                    summary.accounts.len(),
                    world.grants.len()
                );
                for line in summary.accounts.iter().chain(&summary.grants) {
                    println!("{line}");
                }
                for line in dev.describe_issuers() {
                    println!("{line}");
                }
            }
        }
    }
}

impl Dev {
    /// Reconciles every account and grant, writes what changed, rotates signing keys if due,
    /// and swaps the token core's registry. Returns one line per account and grant for people.
    fn apply(&self, world: &Manifests) -> Applied {
        for e in &world.errors {
            tracing::warn!(error = %e, "manifest not loaded");
        }
        let now = SystemTime::now();
        let keys = state::load_signing_keys(&self.state, &key_policy(&self.options), now_unix());
        if let Err(e) = &keys {
            tracing::warn!(error = %e, "signing keys");
        }
        let claims = store::audience_claims(&world.accounts);
        let ctx = Context {
            issuer: &self.issuer,
            ca_bundle: None,
            now,
        };
        let mut accounts = Vec::with_capacity(world.accounts.len());
        let mut lines = vec![];
        for sa in &world.accounts {
            let mut sa = sa.clone();
            let key = store::key_of(&sa);
            let namespace = sa.namespace().unwrap_or_default();
            sa.status = self.state.read_status(&namespace, &sa.name_any());
            let mut observed = Observed {
                audience_claimed_by: sa
                    .spec
                    .api
                    .as_ref()
                    .and_then(|a| claims.get(&a.audience))
                    .filter(|owner| **owner != key)
                    .cloned(),
                ..Default::default()
            };
            for name in secret_names(&sa) {
                if let Some(data) = self.state.read_secret(&namespace, &name) {
                    let controlled =
                        self.state.owner_of(&namespace, &name).as_deref() == Some(key.as_str());
                    observed
                        .secrets
                        .insert(name, ObservedSecret { data, controlled });
                }
            }
            let plan = service_account::reconcile(&sa, &observed, &ctx, &mut RandomGenerator);
            for s in &plan.secrets {
                if let Err(e) = self.state.write_secret(&namespace, &s.name, &key, &s.data) {
                    tracing::warn!(object = %key, secret = %s.name, error = %e, "cannot write Secret");
                }
            }
            for ev in &plan.events {
                let kind = if ev.warning { "Warning" } else { "Normal" };
                println!("event {kind} {} {key}: {}", ev.reason, ev.message);
            }
            if sa.status.as_ref() != Some(&plan.status)
                && let Err(e) = self
                    .state
                    .write_status(&namespace, &sa.name_any(), &plan.status)
            {
                tracing::warn!(object = %key, error = %e, "cannot save status");
            }
            sa.status = Some(plan.status);
            lines.push(self.describe(&sa));
            accounts.push(sa);
        }
        let with_uids = self.grants_with_uids(world);
        let grants = self.apply_grants(world, &with_uids, &accounts, &keys, now);
        if let Ok(keys) = keys {
            self.core.set_keys(keys);
        }
        self.core.set_registry(store::build_registry(
            &accounts,
            &with_uids,
            self.options.allow_unclaimed_audiences,
        ));
        self.trusted.set_issuers(&world.issuers);
        Applied {
            accounts: lines,
            grants,
        }
    }

    /// The TokenGrant reconcile for every grant: statuses under the state dir, output tokens
    /// as mounted-Secret files. Deny-list entries have no shared list to go to here; they are
    /// not needed for that: a revoked or removed grant leaves the registry, so every token
    /// naming it (claim `grants`) is inactive at once, and a revoked grant loses its output
    /// token. (Un-revoking it revives its earlier tokens here, unlike in a cluster.)
    fn apply_grants(
        &self,
        world: &Manifests,
        grants: &[crate::api::TokenGrant],
        accounts: &[crate::api::ServiceAccount],
        keys: &Result<KeySet, String>,
        now: SystemTime,
    ) -> Vec<String> {
        let ctx = token_grant::Context { now };
        let mut lines = vec![];
        let mut next: Option<Duration> = None;
        for g in grants {
            let mut g = g.clone();
            let key = store::key_of(&g);
            // Not `namespace/name` alone: an account of the same name must not pass for it.
            let owner = format!("tokengrant:{key}");
            let namespace = g.namespace().unwrap_or_default();
            g.status = self.state.read_grant_status(&namespace, &g.name_any());
            let (audience_owner, defined_scopes) = token_grant::audience_owner(&g, accounts);
            let secret = g.spec.output.as_ref().and_then(|o| {
                let data = self.state.read_secret(&namespace, &o.secret_name)?;
                let controlled = self.state.owner_of(&namespace, &o.secret_name).as_deref()
                    == Some(owner.as_str());
                Some(ObservedSecret { data, controlled })
            });
            let w = token_grant::World {
                audience_owner,
                defined_scopes,
                allow_unclaimed_audiences: self.options.allow_unclaimed_audiences,
                subject: token_grant::resolve_subject(&g, accounts, |ns, name| {
                    world
                        .issuers
                        .iter()
                        .any(|i| i.namespace().as_deref() == Some(ns) && i.name_any() == name)
                }),
                secret,
                signing_key: keys.as_ref().map(|k| k.signer()).map_err(Clone::clone),
                issuer: &self.issuer,
                max_token_lifetime: self.options.max_token_lifetime,
            };
            let mut plan = token_grant::reconcile(&g, &w, &ctx);
            if let Some(s) = &plan.secret
                && let Err(e) = self
                    .state
                    .write_secret(&namespace, &s.name, &owner, &s.data)
            {
                plan = token_grant::after_write_failure(&g, &w, &ctx, &e.to_string());
            }
            if g.status.as_ref() != Some(&plan.status) {
                for ev in &plan.events {
                    let kind = if ev.warning { "Warning" } else { "Normal" };
                    println!(
                        "event {kind} {} TokenGrant {key}: {}",
                        ev.reason, ev.message
                    );
                }
                if let Err(e) =
                    self.state
                        .write_grant_status(&namespace, &g.name_any(), &plan.status)
                {
                    tracing::warn!(grant = %key, error = %e, "cannot save TokenGrant status");
                }
            }
            // A failed issue is retried on the next tick.
            let wake = if plan.failed {
                Some(Duration::from_secs(5))
            } else {
                plan.requeue_after
            };
            if let Some(w) = wake {
                next = Some(next.map_or(w, |n| n.min(w)));
            }
            g.status = Some(plan.status);
            lines.push(self.describe_grant(&g));
        }
        *self.next_due.lock().expect("not poisoned") = next.map(|d| std::time::Instant::now() + d);
        lines
    }

    /// The manifests' grants with `metadata.uid` set from the state dir (there is no API
    /// server to assign one). A grant missing from the manifests loses its uid, unless some
    /// manifest could not be read: a file caught mid-edit must not void every token of the
    /// grants in it.
    fn grants_with_uids(&self, world: &Manifests) -> Vec<crate::api::TokenGrant> {
        let present: Vec<String> = world.grants.iter().map(store::key_of).collect();
        let (uids, saved) = self.state.grant_uids(
            &present,
            world.errors.is_empty(),
            crate::crypto::new_client_id,
        );
        if let Err(e) = saved {
            // The uids hold until the process ends; after a restart the grants would get new
            // ones and every token issued before would be void.
            tracing::warn!(error = %e, "cannot save TokenGrant uids");
        }
        world
            .grants
            .iter()
            .map(|g| {
                let mut g = g.clone();
                g.metadata.uid = uids.get(&store::key_of(&g)).cloned();
                g
            })
            .collect()
    }

    fn describe_grant(&self, g: &crate::api::TokenGrant) -> String {
        let status = g.status.clone().unwrap_or_default();
        let readiness = match find(&status.conditions, types::READY) {
            Some(c) if c.status == ConditionStatus::True => "Ready".to_owned(),
            Some(c) => format!("NotReady ({}: {})", c.reason, c.message),
            None => "Unknown".to_owned(),
        };
        let namespace = g.namespace().unwrap_or_default();
        let what = match (&g.spec.output, &status.not_after) {
            (Some(o), Some(t)) => format!(
                "token in {} until {}",
                self.state.secret_dir(&namespace, &o.secret_name).display(),
                t.0
            ),
            _ => format!("audience {}", g.spec.audience),
        };
        format!("  {:<36} {readiness:<8} {what}", store::key_of(g))
    }

    /// One line per TrustedIssuer: Ready, or the reason it is not.
    fn describe_issuers(&self) -> Vec<String> {
        self.trusted
            .statuses()
            .into_iter()
            .map(|(key, s)| describe_issuer(&key, &s))
            .collect()
    }

    fn describe(&self, sa: &crate::api::ServiceAccount) -> String {
        let status = sa.status.clone().unwrap_or_default();
        let ready = find(&status.conditions, types::READY);
        let readiness = match ready {
            Some(c) if c.status == ConditionStatus::True => "Ready".to_owned(),
            Some(c) => format!("NotReady ({}: {})", c.reason, c.message),
            None => "Unknown".to_owned(),
        };
        let namespace = sa.namespace().unwrap_or_default();
        let creds: Vec<String> = secret_names(sa)
            .iter()
            .map(|n| self.state.secret_dir(&namespace, n).display().to_string())
            .collect();
        let client = status.client_id.as_deref().unwrap_or("-");
        let what = if creds.is_empty() {
            match &sa.spec.api {
                Some(api) => format!("API {}", api.audience),
                None => "federated: no stored credentials".to_owned(),
            }
        } else {
            format!("credentials in {}", creds.join(", "))
        };
        format!(
            "  {:<36} {readiness:<8} client_id={client:<36} {what}",
            store::key_of(sa)
        )
    }
}

fn print_banner(dev: &Dev, summary: &Applied) {
    let iss = &dev.issuer;
    println!(
        "s2s-operator dev: token server for {} manifest path(s)",
        dev.options.manifests.len()
    );
    println!("  issuer:      {iss}");
    println!("  token:       {iss}/oauth2/token");
    println!("  jwks:        {iss}/jwks.json");
    println!("  discovery:   {iss}/.well-known/openid-configuration");
    println!("  state dir:   {}", dev.options.state_dir.display());
    println!("accounts:");
    for line in &summary.accounts {
        println!("{line}");
    }
    if !summary.grants.is_empty() {
        println!("grants:");
        for line in &summary.grants {
            println!("{line}");
        }
    }
    let issuers = dev.describe_issuers();
    if !issuers.is_empty() {
        println!("trusted issuers:");
        for line in issuers {
            println!("{line}");
        }
    }
}

fn describe_issuer(key: &str, s: &IssuerStatus) -> String {
    let readiness = if s.ready {
        "Ready".to_owned()
    } else {
        format!("NotReady ({}: {})", s.reason, s.message)
    };
    format!(
        "  {key:<36} {readiness:<8} issuer={} keys={}",
        s.issuer.as_deref().unwrap_or("-"),
        s.key_count
    )
}
