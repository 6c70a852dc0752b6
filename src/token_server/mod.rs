//! `s2s-operator token-server`: the token core fed by watches. Reflector stores hold every
//! ServiceAccount (verifiers come from their status), TokenGrant and TrustedIssuer, and the
//! operator's signing-key Secret; any change rebuilds the read model and swaps it in whole.
//! No request ever calls the API, and the server reads no workload Secret.
//!
//! `/readyz` and the token endpoints answer only once every store has synced and the
//! signing keys are loaded. The keys in force are recomputed when one activates or retires,
//! so every replica switches at the same instant.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::api::{ServiceAccount, TokenGrant, TrustedIssuer};
use crate::controller::{Stop, stopped};
use crate::http::RevocationSink;
use crate::http::{self, AppState};
use crate::inject;
use crate::revocation;
use crate::signing_keys::{self, SECRET_NAME};
use crate::store;
use crate::tls::serve as tls;
use crate::token::{Clock, Config, Core, KeySet};
use crate::trusted_issuer::cache::IssuerCache;
use crate::trusted_issuer::fetch::Fetcher;

/// Settings of the token server.
#[derive(Clone, Debug)]
pub struct Options {
    /// The operator namespace (signing keys).
    pub namespace: String,
    /// The issuer URL.
    pub issuer: String,
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the TLS certificate comes from; plain HTTP without.
    pub tls: Option<tls::Source>,
    /// The sidecar-injection webhook, on its own address and certificate.
    pub webhook: Option<WebhookOptions>,
    /// Upper bound on token lifetimes.
    pub max_token_lifetime: Duration,
    /// Let grants name audiences no account claims.
    pub allow_unclaimed_audiences: bool,
    /// Brute-force protection of client authentication.
    pub limits: http::Limits,
    /// Where the audit trail goes.
    pub audit: http::audit::Target,
    /// On stop, how long to keep answering (with `/readyz` at 503 and `Connection: close`)
    /// before closing, so load balancers and keep-alive clients move away without a lost
    /// request.
    pub shutdown_drain: Duration,
}

/// The sidecar-injection webhook's settings.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// Where to listen (HTTPS only: the API server accepts nothing else).
    pub listen: SocketAddr,
    /// Its certificate.
    pub tls: tls::Source,
    /// Image, defaults.
    pub config: inject::Config,
}

/// What can stop the token server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The audit file cannot be opened.
    #[error("audit log: {0}")]
    Audit(String),
    /// The TLS files cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// The read side: stores and the state they feed.
struct Model {
    accounts: Store<ServiceAccount>,
    grants: Store<TokenGrant>,
    issuers: Store<TrustedIssuer>,
    keys: Store<Secret>,
    revocations: Store<ConfigMap>,
    state: Arc<AppState>,
    clock: Arc<dyn Clock>,
    allow_unclaimed_audiences: bool,
    /// TrustedIssuer keys, fed from `issuers`.
    trusted: IssuerCache,
    /// Set once every store has synced.
    stores_ready: tokio::sync::watch::Sender<bool>,
}

/// Runs the token server until `stop`. `bound` receives the local address once listening.
pub async fn run(
    client: Client,
    options: Options,
    clock: Arc<dyn Clock>,
    stop: Stop,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: options.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(ServeError::Serve)?;
    let tls = match &options.tls {
        Some(source) => Some(tls::Reloading::new(source.clone()).map_err(ServeError::Tls)?),
        None => None,
    };
    let webhook_listener = match &options.webhook {
        Some(w) => Some((
            tokio::net::TcpListener::bind(w.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: w.listen,
                    source,
                })?,
            tls::Reloading::new(w.tls.clone()).map_err(ServeError::Tls)?,
        )),
        None => None,
    };

    let mut config = Config::new(options.issuer.trim_end_matches('/'));
    config.max_token_lifetime = options.max_token_lifetime;
    // A throwaway key until the real ones load; nothing is served before that (not ready).
    let placeholder = crate::crypto::generate_key(Default::default())
        .and_then(|k| {
            crate::crypto::SigningKey::from_pem(Default::default(), k.kid, &k.private_pem)
        })
        .and_then(|k| KeySet::new(k, vec![]))
        .map_err(|e| ServeError::Tls(format!("cannot create a key: {e}")))?;
    let core = Arc::new(Core::new(
        config,
        Default::default(),
        placeholder,
        clock.clone(),
    ));
    let audit = http::Audit::new(&options.audit).map_err(|e| ServeError::Audit(e.to_string()))?;
    let state = AppState::with(core, options.limits.clone(), audit);

    let changed = Arc::new(Notify::new());
    let (accounts, accounts_w) = reflector::store();
    let (grants, grants_w) = reflector::store();
    let (issuers, issuers_w) = reflector::store();
    let (keys, keys_w) = reflector::store();
    let (revocations, revocations_w) = reflector::store();
    let revocations_watch = drive(
        reflector::reflector(
            revocations_w,
            watcher(
                Api::<ConfigMap>::namespaced(client.clone(), &options.namespace),
                watcher::Config::default()
                    .fields(&format!("metadata.name={}", revocation::CONFIGMAP_NAME)),
            ),
        ),
        &changed,
    );
    let _ = state.revocation_sink.set(Arc::new(ApiRevocations {
        client: client.clone(),
        namespace: options.namespace.clone(),
    }));
    let watches = futures::future::join5(
        revocations_watch,
        drive(
            reflector::reflector(
                accounts_w,
                watcher(
                    Api::<ServiceAccount>::all(client.clone()),
                    watcher::Config::default(),
                ),
            ),
            &changed,
        ),
        drive(
            reflector::reflector(
                grants_w,
                watcher(
                    Api::<TokenGrant>::all(client.clone()),
                    watcher::Config::default(),
                ),
            ),
            &changed,
        ),
        drive(
            reflector::reflector(
                issuers_w,
                watcher(
                    Api::<TrustedIssuer>::all(client.clone()),
                    watcher::Config::default(),
                ),
            ),
            &changed,
        ),
        drive(
            reflector::reflector(
                keys_w,
                watcher(
                    Api::<Secret>::namespaced(client.clone(), &options.namespace),
                    watcher::Config::default().fields(&format!("metadata.name={SECRET_NAME}")),
                ),
            ),
            &changed,
        ),
    );
    // TrustedIssuer keys: fetched in the background, every new snapshot swapped into the
    // core; an unknown kid asks for an early (rate-limited) fetch.
    let trusted = IssuerCache::new(Fetcher::new(Some(client.clone())), clock.clone());
    state.core.set_unknown_kid_hook(trusted.unknown_kid_hook());
    let forward = {
        let mut snapshots = trusted.subscribe();
        let core = state.core.clone();
        async move {
            loop {
                let snapshot = (**snapshots.borrow_and_update()).clone();
                core.set_issuers(snapshot);
                if snapshots.changed().await.is_err() {
                    break;
                }
            }
        }
    };
    let key_refresh = trusted.clone().run(stopped(stop.clone()));
    let stores_ready = tokio::sync::watch::channel(false).0;
    let webhook = match (webhook_listener, &options.webhook) {
        (Some((listener, hook_tls)), Some(w)) => {
            let hook = Arc::new(inject::server::Webhook::new(
                accounts.clone(),
                issuers.clone(),
                w.config.clone(),
                tls.as_ref()
                    .map(|t| t.bundle())
                    .unwrap_or_else(|| tokio::sync::watch::channel(None).1),
                state.metrics.registry(),
            ));
            let mut ready = stores_ready.subscribe();
            let stop = stop.clone();
            futures::future::Either::Left(async move {
                // Only once the stores are filled: an empty store would refuse every Pod as
                // naming a missing account. `refresh_on` is the stores' one waiter (see
                // controller::lead for why there must be only one).
                let _ = ready.wait_for(|r| *r).await;
                tracing::info!(addr = ?listener.local_addr().ok(), "injection webhook listening");
                if let Err(e) = tls::serve(
                    listener,
                    hook_tls,
                    inject::server::router(hook),
                    stopped(stop),
                )
                .await
                {
                    tracing::error!(error = %e, "webhook server failed");
                }
            })
        }
        _ => futures::future::Either::Right(futures::future::pending::<()>()),
    };
    let model = Model {
        accounts,
        grants,
        issuers,
        keys,
        revocations,
        state: state.clone(),
        clock,
        allow_unclaimed_audiences: options.allow_unclaimed_audiences,
        trusted,
        stores_ready,
    };
    let refresh = model.refresh_on(changed.clone());

    let drain_state = state.clone();
    let router = http::router(state);
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    tracing::info!(%local, tls = tls.is_some(), "token server listening");
    let drain = options.shutdown_drain;
    let drained = {
        let (state, stop) = (drain_state, stop.clone());
        async move {
            stopped(stop).await;
            state
                .draining
                .store(true, std::sync::atomic::Ordering::Release);
            tracing::info!(?drain, "draining before shutdown");
            tokio::time::sleep(drain).await;
        }
    };
    let serve = async {
        match tls {
            Some(tls) => tls::serve(listener, tls, router, drained)
                .await
                .map_err(ServeError::Serve),
            None => axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(drained)
            .await
            .map_err(ServeError::Serve),
        }
    };
    tokio::select! {
        r = serve => r,
        () = async { tokio::join!(watches, refresh, forward, key_refresh, webhook); } => Ok(()),
    }
}

/// Drives a reflector's watch stream (with backoff), waking the refresher on every event.
async fn drive<K, S>(stream: S, changed: &Notify)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(_) => changed.notify_one(),
            Err(e) => tracing::warn!(error = %e, "watch failed; retrying"),
        }
    }
}

impl Model {
    /// Rebuilds on every change (coalescing bursts), and when a key activates or retires.
    async fn refresh_on(self, changed: Arc<Notify>) {
        let _ = self.accounts.wait_until_ready().await;
        let _ = self.grants.wait_until_ready().await;
        let _ = self.issuers.wait_until_ready().await;
        let _ = self.keys.wait_until_ready().await;
        let _ = self.revocations.wait_until_ready().await;
        self.stores_ready.send_replace(true);
        // A lone change is applied at once (a rotated secret must verify as soon as its
        // status lands); a burst is coalesced into at most one rebuild per 50 ms, so a
        // flood of events costs O(n) per 50 ms, not per event.
        const MIN_GAP: Duration = Duration::from_millis(50);
        loop {
            let wait = self.rebuild();
            let built = tokio::time::Instant::now();
            tokio::select! {
                () = changed.notified() => {
                    tokio::time::sleep_until(built + MIN_GAP).await;
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Swaps in a new registry and key set. Returns when to look again even if nothing
    /// changes: when a key activates or retires, or soon while the keys are missing.
    fn rebuild(&self) -> Duration {
        let accounts: Vec<ServiceAccount> = self
            .accounts
            .state()
            .iter()
            .map(|a| a.as_ref().clone())
            .collect();
        let grants: Vec<TokenGrant> = self
            .grants
            .state()
            .iter()
            .map(|g| g.as_ref().clone())
            .collect();
        let registry = store::build_registry(&accounts, &grants, self.allow_unclaimed_audiences);
        let deny = self
            .revocations
            .state()
            .into_iter()
            .next()
            .and_then(|cm| cm.data.clone())
            .map(|d| crate::token::deny::DenyList::from_data(&d))
            .unwrap_or_default();
        self.state.core.set_deny_list(deny);
        self.state.core.set_registry(registry);
        // A deleted TrustedIssuer leaves the snapshot published by this call.
        let trusted = self.issuers.state();
        self.trusted.set_issuers(trusted.iter().map(|t| t.as_ref()));

        let now = self
            .clock
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match self.load_keys(now) {
            Ok(next) => {
                // Ready once the keys are in; a later bad update keeps the last good keys.
                if !self.state.ready.load(Ordering::Acquire) {
                    tracing::info!(
                        accounts = accounts.len(),
                        grants = grants.len(),
                        "token server ready"
                    );
                    self.state.set_ready(true);
                }
                next
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing keys not usable yet");
                Duration::from_secs(5)
            }
        }
    }

    fn load_keys(&self, now: u64) -> Result<Duration, String> {
        let secret = self
            .keys
            .state()
            .into_iter()
            .next()
            .ok_or("waiting for the controller to create them")?;
        let records = signing_keys::from_data(&crate::k8s::secret_strings(&secret))
            .map_err(|e| e.to_string())?;
        let (signer, published) =
            signing_keys::keys_at(&records, now).map_err(|e| e.to_string())?;
        let keys = KeySet::new(signer, published).map_err(|e| e.to_string())?;
        self.state.core.set_keys(keys);
        Ok(signing_keys::next_transition(&records, now)
            .map(|t| Duration::from_secs(t.saturating_sub(now).max(1)))
            .unwrap_or(Duration::from_secs(300)))
    }
}

/// Revocations go to the shared ConfigMap, which every replica watches.
struct ApiRevocations {
    client: Client,
    namespace: String,
}

impl RevocationSink for ApiRevocations {
    fn revoke(
        &self,
        jti: String,
        exp: u64,
    ) -> futures::future::BoxFuture<'static, Result<(), String>> {
        let (client, namespace) = (self.client.clone(), self.namespace.clone());
        Box::pin(async move {
            revocation::revoke_jti(&client, &namespace, &jti, exp)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
