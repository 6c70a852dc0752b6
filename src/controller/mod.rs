//! `s2s-operator controller`: reconciles ServiceAccounts into Secrets and status, and keeps
//! the token-signing keys — only while holding the leader Lease. Replicas that do not lead
//! wait; a leader that loses the Lease stops its work before anyone else may start theirs.
//!
//! Inside the lead: a kube-runtime `Controller` over ServiceAccounts that owns the Secrets
//! it writes (watched by label), one over TrustedIssuers that reports their keys in status,
//! one over TokenGrants that owns their output Secrets and writes their revocations, and the
//! signing-key manager, and (when asked) the manager of the operator's own CA and serving
//! certificates.

mod metrics;

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

pub use metrics::{Metrics, health_router};

use crate::access_token::controller as token_controller;
use crate::api::{AccessToken, ServiceAccount, TokenGrant, TrustedIssuer};
use crate::k8s::lease::{Elector, Timing};
use crate::k8s::{self, FIELD_MANAGER};
use crate::service_account::controller::{self as sa_controller, Ctx};
use crate::signing_keys::Policy;
use crate::signing_keys::controller::KeyManager;
use crate::token::Clock;
use crate::token_grant::controller as grant_controller;
use crate::trusted_issuer::cache::IssuerCache;
use crate::trusted_issuer::controller as ti_controller;
use crate::trusted_issuer::fetch::Fetcher;

/// Name of the leader Lease in the operator namespace.
pub const LEASE_NAME: &str = "s2s-operator-controller";

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Options {
    /// The operator namespace (signing keys, Lease).
    pub namespace: String,
    /// The issuer URL written into credentials Secrets.
    pub issuer: String,
    /// Signing-key rotation.
    pub key_policy: Policy,
    /// This replica's identity in the Lease.
    pub identity: String,
    /// Lease timing.
    pub lease: Timing,
    /// How many accounts are reconciled at once.
    pub concurrency: u16,
    /// How often expired entries leave the revocation list.
    pub revocation_prune_every: std::time::Duration,
    /// Upper bound on every token's lifetime: TokenGrant output tokens are capped by it, and
    /// a revoked grant's deny-list entry outlives it.
    pub max_token_lifetime: std::time::Duration,
    /// Let TokenGrants name audiences that no ServiceAccount claims (as the token server).
    pub allow_unclaimed_audiences: bool,
    /// The operator's own CA and serving certificates, when it issues them.
    pub tls: Option<crate::tls::manager::Options>,
}

/// A stop signal shared by every task: `true` once shutdown began.
pub type Stop = watch::Receiver<bool>;

/// Resolves once `stop` says so (or its sender is gone).
pub async fn stopped(mut stop: Stop) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the controller until `stop`. Returns once the work has stopped and the Lease is
/// released.
pub async fn run(
    client: Client,
    options: Options,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    leading_tx: watch::Sender<bool>,
    stop: Stop,
) {
    let elector = Elector::new(
        client.clone(),
        &options.namespace,
        LEASE_NAME,
        &options.identity,
        options.lease.clone(),
    );
    let mut leading = leading_tx.subscribe();
    // The elector stops only after the work has: the Lease is never released while we act.
    let (elector_stop_tx, elector_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let election = AbortOnDrop(tokio::spawn(elector.run(leading_tx, async move {
        let _ = elector_stop_rx.await;
    })));
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { break },
            () = stopped(stop.clone()) => break,
        }
        metrics.leader.set(1);
        // Aborted with this future too: if `run` is dropped, nothing it started keeps writing.
        let mut work = AbortOnDrop(tokio::spawn(lead(
            client.clone(),
            options.clone(),
            clock.clone(),
            metrics.clone(),
        )));
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => tracing::warn!("no longer leading: stopping work"),
            () = stopped(stop.clone()) => {}
        }
        work.0.abort();
        let _ = (&mut work.0).await;
        metrics.leader.set(0);
        if *stop.borrow() {
            break;
        }
    }
    let _ = elector_stop_tx.send(());
    let mut election = election;
    let _ = (&mut election.0).await;
}

/// A task aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the leader does: the ServiceAccount controller and the key manager, until aborted.
async fn lead(client: Client, options: Options, clock: Arc<dyn Clock>, metrics: Arc<Metrics>) {
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::all(client.clone());
    let controller = Controller::new(accounts, watcher::Config::default());
    let account_store = controller.store();
    // With the operator's TLS on, every credentials Secret carries its trust bundle: accounts
    // are reconciled only once the bundle is known (else each leader change would write every
    // Secret twice, without and then with it), and all again whenever it changes.
    let (bundle_tx, bundle_rx) = watch::channel(None::<String>);
    let tls_on = options.tls.is_some();
    let bundle_changes = futures::stream::unfold(bundle_rx.clone(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        issuer: options.issuer.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        ),
        accounts: controller.store(),
        clock: clock.clone(),
        failures: Mutex::new(Default::default()),
        metrics: metrics.clone(),
        ca_bundle: bundle_rx.clone(),
    });
    let accounts_loop = controller
        .owns(
            secrets,
            watcher::Config::default().labels(&k8s::managed_selector()),
        )
        .reconcile_all_on(bundle_changes)
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .run(sa_controller::reconcile, sa_controller::error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let accounts_loop = {
        let mut first = bundle_rx.clone();
        async move {
            if tls_on {
                let _ = first.wait_for(Option::is_some).await;
            }
            accounts_loop.await;
        }
    };
    let issuers_ctx = Arc::new(ti_controller::Ctx {
        client: client.clone(),
        cache: IssuerCache::new(Fetcher::new(Some(client.clone())), clock.clone()),
        clock: clock.clone(),
        metrics: metrics.clone(),
    });
    let issuers_controller = Controller::new(
        Api::<TrustedIssuer>::all(client.clone()),
        watcher::Config::default(),
    );
    let issuer_store = issuers_controller.store();
    let issuers_loop = issuers_controller
        .run(
            ti_controller::reconcile,
            ti_controller::error_policy,
            issuers_ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let grants_controller = Controller::new(
        Api::<TokenGrant>::all(client.clone()),
        watcher::Config::default(),
    );
    let grant_store = grants_controller.store();
    let (accounts_ready, issuers_ready) = (account_store.clone(), issuer_store.clone());
    let accounts_for_tokens = account_store.clone();
    let grants_ctx = Arc::new(grant_controller::Ctx {
        client: client.clone(),
        namespace: options.namespace.clone(),
        issuer: options.issuer.clone(),
        max_token_lifetime: options.max_token_lifetime,
        allow_unclaimed_audiences: options.allow_unclaimed_audiences,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        ),
        accounts: account_store,
        issuers: issuer_store,
        clock: clock.clone(),
        failures: Mutex::new(Default::default()),
        metrics: metrics.clone(),
    });
    // Grant decisions need every account and issuer, so the grant controller starts once
    // both stores are ready: one waiter each. Waiting inside each reconcile instead hung on a
    // real apiserver: kube-runtime's `Store::wait_until_ready` wakes only the last of several
    // concurrent waiters, so grants present at start-up were never reconciled.
    let (stores_tx, stores_rx) = watch::channel(false);
    let ready = async move {
        let _ = accounts_ready.wait_until_ready().await;
        let _ = issuers_ready.wait_until_ready().await;
        tracing::debug!("account and issuer stores ready: starting the TokenGrant controller");
        let _ = stores_tx.send(true);
    };
    let grants_for_tokens = grant_store.clone();
    let grants_loop = grants_controller
        .owns(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels(&k8s::managed_selector()),
        )
        .watches(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default(),
            move |sa| grant_controller::grants_for_account(&grant_store, &sa),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .run(
            grant_controller::reconcile,
            grant_controller::error_policy,
            grants_ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    let grants_loop = {
        let mut ready = stores_rx.clone();
        async move {
            let _ = ready.wait_for(|r| *r).await;
            grants_loop.await;
        }
    };
    let tokens_loop = access_tokens(
        &client,
        &options,
        &clock,
        &metrics,
        accounts_for_tokens,
        grants_for_tokens,
        stores_rx,
    );
    let revocations = crate::revocation::maintain(
        client.clone(),
        options.namespace.clone(),
        clock.clone(),
        options.revocation_prune_every,
    );
    let tls = match options.tls.clone() {
        Some(tls) => futures::future::Either::Left(
            crate::tls::manager::TlsManager::new(
                client.clone(),
                &options.namespace,
                tls,
                clock.clone(),
                bundle_tx,
            )
            .run(),
        ),
        None => futures::future::Either::Right(futures::future::ready(())),
    };
    let keys = KeyManager::new(client, &options.namespace, options.key_policy, clock).run();
    tokio::join!(
        ready,
        accounts_loop,
        issuers_loop,
        grants_loop,
        tokens_loop,
        keys,
        revocations,
        tls
    );
}

/// The AccessToken controller: it owns the token Secrets, looks again when a grant naming
/// the account or the account itself changes, and starts once the account and issuer stores
/// (`stores_ready`) and then the grant store are ready — each store with one waiter (see the
/// kube-runtime wake-up bug in [`lead`]).
fn access_tokens(
    client: &Client,
    options: &Options,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
    accounts: kube::runtime::reflector::Store<ServiceAccount>,
    grants: kube::runtime::reflector::Store<TokenGrant>,
    mut stores_ready: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + use<> {
    let controller = Controller::new(
        Api::<AccessToken>::all(client.clone()),
        watcher::Config::default(),
    );
    let (by_grant, by_account) = (controller.store(), controller.store());
    metrics.set_token_sources(grants.clone(), controller.store());
    let grants_ready = grants.clone();
    let ctx = Arc::new(token_controller::Ctx {
        client: client.clone(),
        namespace: options.namespace.clone(),
        issuer: options.issuer.clone(),
        max_token_lifetime: options.max_token_lifetime,
        allow_unclaimed_audiences: options.allow_unclaimed_audiences,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        ),
        accounts,
        grants,
        clock: clock.clone(),
        failures: Mutex::new(Default::default()),
        metrics: metrics.clone(),
    });
    let run = controller
        .owns(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().labels(&k8s::managed_selector()),
        )
        .watches(
            Api::<TokenGrant>::all(client.clone()),
            watcher::Config::default(),
            move |g| token_controller::tokens_for_grant(&by_grant, &g),
        )
        .watches(
            Api::<ServiceAccount>::all(client.clone()),
            watcher::Config::default(),
            move |sa| token_controller::tokens_for_account(&by_account, &sa),
        )
        .with_config(kube::runtime::controller::Config::default().concurrency(options.concurrency))
        .run(
            token_controller::reconcile,
            token_controller::error_policy,
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "controller event");
            }
        });
    async move {
        let _ = stores_ready.wait_for(|r| *r).await;
        let _ = grants_ready.wait_until_ready().await;
        tracing::debug!("grant store ready: starting the AccessToken controller");
        run.await;
    }
}

/// This replica's identity: `POD_NAME`, else the host name and process id.
pub fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "s2s-operator".into());
    format!("{host}-{}", std::process::id())
}
