//! `s2s-operator dev`: the controller's reconcile and the token server in one process, with
//! no cluster. Manifests are read from files; every Secret the controller would create is
//! written as a mounted-Secret tree, `STATE_DIR/<namespace>/<secret-name>/<key>`; statuses,
//! ownership and the signing keys persist under the state dir, so nothing is regenerated on
//! a restart, and so do RFC 7009 revocations (saved before the revoke endpoint answers,
//! dropped once the token has expired). Each TokenGrant and AccessToken gets a uid kept in
//! the state dir as the API server would give one; a grant removed from the manifests loses
//! it, so the tokens that name it are void even if it comes back. A TokenGrant's `output` and
//! an AccessToken go through the same steps (`settle`): the token as Secret files, the status
//! saved, Events printed. Manifests are polled and re-applied when they change, and at least
//! every 30 seconds (sooner when a grant's output or an AccessToken is due for renewal).

mod manifests;
mod state;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kube::ResourceExt;

pub use manifests::{Manifests, load, parse_text};
use state::StateDir;

use crate::access_token;
use crate::api::TokenGrantStatus;
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
    /// When a TokenGrant's output or an AccessToken is next due, if sooner than the regular
    /// re-apply.
    next_due: std::sync::Mutex<Option<std::time::Instant>>,
}

/// What one pass did, for people: one line per account, grant and AccessToken.
struct Applied {
    accounts: Vec<String>,
    grants: Vec<String>,
    access_tokens: Vec<String>,
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
/// periods and token renewals run on time, not on edits), sooner when a grant's output or an
/// AccessToken is due.
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
                    "manifests changed: {} account(s), {} grant(s), {} access token(s) loaded",
                    summary.accounts.len(),
                    world.grants.len(),
                    world.access_tokens.len()
                );
                for line in summary
                    .accounts
                    .iter()
                    .chain(&summary.grants)
                    .chain(&summary.access_tokens)
                {
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
    /// Reconciles every account, grant and AccessToken, writes what changed, rotates signing
    /// keys if due, and swaps the token core's registry. Returns one line per object for
    /// people.
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
        let forget_missing = world.errors.is_empty();
        let with_uids = self.with_uids(state::TOKEN_GRANTS, &world.grants, forget_missing);
        let (grants, grants_due) = self.apply_grants(world, &with_uids, &accounts, &keys, now);
        let tokens = self.with_uids(state::ACCESS_TOKENS, &world.access_tokens, forget_missing);
        let (access_tokens, tokens_due) =
            self.apply_access_tokens(&tokens, &with_uids, &accounts, &keys, now);
        if forget_missing {
            self.collect_garbage(world);
        }
        let next = earliest(grants_due, tokens_due);
        *self.next_due.lock().expect("not poisoned") = next.map(|d| std::time::Instant::now() + d);
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
            access_tokens,
        }
    }

    /// What the API server's garbage collector does when an object is deleted: its
    /// Secrets go (a removed AccessToken or grant output leaves no token on disk, a removed
    /// account no credentials), and so does its status. Only when every manifest was read:
    /// a file caught mid-edit must not delete anything.
    fn collect_garbage(&self, world: &Manifests) {
        let accounts: BTreeSet<String> = world.accounts.iter().map(store::key_of).collect();
        let grants: BTreeSet<String> = world.grants.iter().map(store::key_of).collect();
        let tokens: BTreeSet<String> = world.access_tokens.iter().map(store::key_of).collect();
        let mut live = accounts.clone();
        live.extend(grants.iter().map(|k| TokenKind::Grant.owner(k)));
        live.extend(tokens.iter().map(|k| TokenKind::AccessToken.owner(k)));
        match self.state.remove_orphaned_secrets(&live) {
            Ok(removed) => {
                for secret in removed {
                    println!("secret {secret} removed: its owner is no longer in the manifests");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot remove orphaned Secrets"),
        }
        for (kind, present) in [
            (state::SERVICE_ACCOUNTS, &accounts),
            (state::TOKEN_GRANTS, &grants),
            (state::ACCESS_TOKENS, &tokens),
        ] {
            if let Err(e) = self.state.remove_statuses_except(kind, present) {
                tracing::warn!(kind, error = %e, "cannot remove old statuses");
            }
        }
    }

    /// The TokenGrant reconcile for every grant: statuses under the state dir, output tokens
    /// as mounted-Secret files. Deny-list entries have no shared list to go to here; they are
    /// not needed for that: a revoked or removed grant leaves the registry, so every token
    /// naming it (claim `grants`) is inactive at once, and a revoked grant loses its output
    /// token. (Un-revoking it revives its earlier tokens here, unlike in a cluster.) Returns
    /// a line per grant and when the next output token is due.
    fn apply_grants(
        &self,
        world: &Manifests,
        grants: &[crate::api::TokenGrant],
        accounts: &[crate::api::ServiceAccount],
        keys: &Result<KeySet, String>,
        now: SystemTime,
    ) -> (Vec<String>, Option<Duration>) {
        let ctx = token_grant::Context { now };
        let mut lines = vec![];
        let mut next: Option<Duration> = None;
        for g in grants {
            let mut g = g.clone();
            let held = Held::of(TokenKind::Grant, &g);
            g.status = self.read_token_status(&held);
            let (audience_owner, defined_scopes) = token_grant::audience_owner(&g, accounts);
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
                secret: g
                    .spec
                    .output
                    .as_ref()
                    .and_then(|o| self.observed_secret(&held, &o.secret_name)),
                signing_key: keys.as_ref().map(|k| k.signer()).map_err(Clone::clone),
                issuer: &self.issuer,
                max_token_lifetime: self.options.max_token_lifetime,
            };
            let plan = token_grant::reconcile(&g, &w, &ctx);
            let (status, wake) = self.settle(&held, g.status.as_ref(), plan.into(), |why| {
                token_grant::after_write_failure(&g, &w, &ctx, why).into()
            });
            next = earliest(next, wake);
            g.status = Some(status);
            let secret = g.spec.output.as_ref().map(|o| o.secret_name.as_str());
            let what = format!("audience {}", g.spec.audience);
            lines.push(self.describe_token(&held, g.status.as_ref(), secret, what));
        }
        (lines, next)
    }

    /// The AccessToken reconcile for every AccessToken, as for a grant's output: the account's
    /// grants decide what the token may carry exactly as at the token endpoint
    /// ([`access_token::authorization`]); statuses under the state dir, the token as
    /// mounted-Secret files (without the token keys while it is not authorized). Returns a
    /// line per AccessToken and when the next token is due.
    fn apply_access_tokens(
        &self,
        tokens: &[crate::api::AccessToken],
        grants: &[crate::api::TokenGrant],
        accounts: &[crate::api::ServiceAccount],
        keys: &Result<KeySet, String>,
        now: SystemTime,
    ) -> (Vec<String>, Option<Duration>) {
        let ctx = access_token::Context { now };
        let mut lines = vec![];
        let mut next: Option<Duration> = None;
        for t in tokens {
            let mut t = t.clone();
            let held = Held::of(TokenKind::AccessToken, &t);
            t.status = self.read_token_status(&held);
            let (accounts, grants) = access_token::relevant(&t, accounts, grants);
            let registry =
                store::build_registry(&accounts, &grants, self.options.allow_unclaimed_audiences);
            let account = accounts.iter().find(|a| {
                a.namespace() == t.namespace() && a.name_any() == t.spec.service_account_name
            });
            let w = access_token::World {
                authorized: access_token::authorization(&t, account, &registry),
                secret: self.observed_secret(&held, &t.spec.secret_name),
                signing_key: keys.as_ref().map(|k| k.signer()).map_err(Clone::clone),
                issuer: &self.issuer,
                max_token_lifetime: self.options.max_token_lifetime,
            };
            let plan = access_token::reconcile(&t, &w, &ctx);
            let (status, wake) = self.settle(&held, t.status.as_ref(), plan.into(), |why| {
                access_token::after_write_failure(&t, &w, &ctx, why).into()
            });
            next = earliest(next, wake);
            t.status = Some(status);
            let what = format!("audiences {}", t.spec.audiences.join(", "));
            lines.push(self.describe_token(
                &held,
                t.status.as_ref(),
                Some(&t.spec.secret_name),
                what,
            ));
        }
        (lines, next)
    }

    /// The saved status of a grant or AccessToken.
    fn read_token_status(&self, held: &Held) -> Option<TokenGrantStatus> {
        match held.kind {
            TokenKind::Grant => self.state.read_grant_status(&held.namespace, &held.name),
            TokenKind::AccessToken => self
                .state
                .read_access_token_status(&held.namespace, &held.name),
        }
    }

    /// A Secret a grant's output or an AccessToken would keep its token in, as observed.
    fn observed_secret(&self, held: &Held, secret_name: &str) -> Option<ObservedSecret> {
        let data = self.state.read_secret(&held.namespace, secret_name)?;
        let controlled = self.state.owner_of(&held.namespace, secret_name).as_deref()
            == Some(held.owner.as_str());
        Some(ObservedSecret { data, controlled })
    }

    /// Carries out a grant's or AccessToken's plan: writes its Secret (on failure, the plan
    /// `after_write_failure` makes of the error instead), and when the status changed prints
    /// the Events and saves it. Returns the status and when to look again (soon after a
    /// failed issue, else the renewal).
    fn settle(
        &self,
        held: &Held,
        old: Option<&TokenGrantStatus>,
        mut plan: TokenPlan,
        after_write_failure: impl FnOnce(&str) -> TokenPlan,
    ) -> (TokenGrantStatus, Option<Duration>) {
        let (namespace, name) = (&held.namespace, &held.name);
        if let Some(s) = &plan.secret
            && let Err(e) = self
                .state
                .write_secret(namespace, &s.name, &held.owner, &s.data)
        {
            plan = after_write_failure(&e.to_string());
        }
        let kind = held.kind.name();
        if old != Some(&plan.status) {
            for ev in &plan.events {
                let level = if ev.warning { "Warning" } else { "Normal" };
                println!(
                    "event {level} {} {kind} {}: {}",
                    ev.reason, held.key, ev.message
                );
            }
            let saved = match held.kind {
                TokenKind::Grant => self.state.write_grant_status(namespace, name, &plan.status),
                TokenKind::AccessToken => {
                    self.state
                        .write_access_token_status(namespace, name, &plan.status)
                }
            };
            if let Err(e) = saved {
                tracing::warn!(object = %held.key, kind, error = %e, "cannot save status");
            }
        }
        // A failed issue is retried on the next tick.
        let wake = if plan.failed {
            Some(Duration::from_secs(5))
        } else {
            plan.requeue_after
        };
        (plan.status, wake)
    }

    /// The objects with `metadata.uid` set from the state dir (there is no API server to
    /// assign one), `kind` naming their uid file. An object missing from the manifests loses
    /// its uid, unless `forget_missing` is false (some manifest could not be read): a file
    /// caught mid-edit must not void every token of the grants in it.
    fn with_uids<K: kube::Resource + Clone>(
        &self,
        kind: &str,
        objects: &[K],
        forget_missing: bool,
    ) -> Vec<K> {
        let present: Vec<String> = objects.iter().map(store::key_of).collect();
        let (uids, saved) =
            self.state
                .uids(kind, &present, forget_missing, crate::crypto::new_client_id);
        if let Err(e) = saved {
            // The uids hold until the process ends; after a restart the grants would get new
            // ones and every token issued before would be void.
            tracing::warn!(kind, error = %e, "cannot save uids");
        }
        objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o.meta_mut().uid = uids.get(&store::key_of(&o)).cloned();
                o
            })
            .collect()
    }

    /// One line for a grant or AccessToken: Ready or why not, and where its token is until
    /// when, or else `what`.
    fn describe_token(
        &self,
        held: &Held,
        status: Option<&TokenGrantStatus>,
        secret: Option<&str>,
        what: String,
    ) -> String {
        let status = status.cloned().unwrap_or_default();
        let what = match (secret, &status.not_after) {
            (Some(secret), Some(t)) => format!(
                "token in {} until {}",
                self.state.secret_dir(&held.namespace, secret).display(),
                t.0
            ),
            _ => what,
        };
        format!(
            "  {:<36} {:<8} {what}",
            held.key,
            readiness(&status.conditions)
        )
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
        let readiness = readiness(&status.conditions);
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
    if !summary.access_tokens.is_empty() {
        println!("access tokens:");
        for line in &summary.access_tokens {
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

/// `Ready`, `NotReady (reason: message)` or `Unknown`, from the Ready condition.
fn readiness(conditions: &[crate::api::conditions::Condition]) -> String {
    match find(conditions, types::READY) {
        Some(c) if c.status == ConditionStatus::True => "Ready".to_owned(),
        Some(c) => format!("NotReady ({}: {})", c.reason, c.message),
        None => "Unknown".to_owned(),
    }
}

/// The sooner of two wake-ups.
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Which kind of object keeps a token in a Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenKind {
    /// A TokenGrant with `spec.output`.
    Grant,
    /// An AccessToken.
    AccessToken,
}

impl TokenKind {
    fn name(self) -> &'static str {
        match self {
            TokenKind::Grant => "TokenGrant",
            TokenKind::AccessToken => "AccessToken",
        }
    }

    /// The owner in the state dir of the Secrets of the object `key` (`namespace/name`): the
    /// kind and the key (not the key alone: an account of the same name must not pass for
    /// it).
    fn owner(self, key: &str) -> String {
        format!("{}:{key}", self.name().to_lowercase())
    }
}

/// A grant or AccessToken, as `dev` names it and its Secrets.
struct Held {
    kind: TokenKind,
    namespace: String,
    name: String,
    /// `namespace/name`.
    key: String,
    /// Its Secrets' owner in the state dir ([`TokenKind::owner`]).
    owner: String,
}

impl Held {
    fn of<K: ResourceExt>(kind: TokenKind, obj: &K) -> Self {
        let key = store::key_of(obj);
        Self {
            kind,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            owner: kind.owner(&key),
            key,
        }
    }
}

/// What `dev` acts on in the plan of a grant's output or an AccessToken (the same fields;
/// a grant's deny-list entries have nowhere to go here, see `apply_grants`).
struct TokenPlan {
    status: TokenGrantStatus,
    secret: Option<crate::service_account::DesiredSecret>,
    events: Vec<crate::k8s::Event>,
    requeue_after: Option<Duration>,
    failed: bool,
}

impl From<token_grant::Plan> for TokenPlan {
    fn from(p: token_grant::Plan) -> Self {
        Self {
            status: p.status,
            secret: p.secret,
            events: p.events,
            requeue_after: p.requeue_after,
            failed: p.failed,
        }
    }
}

impl From<access_token::Plan> for TokenPlan {
    fn from(p: access_token::Plan) -> Self {
        Self {
            status: p.status,
            secret: p.secret,
            events: p.events,
            requeue_after: p.requeue_after,
            failed: p.failed,
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
