//! HTTPS for the token server and the webhook: rustls (aws-lc-rs) in front of an axum
//! router, with a certificate that is swapped while serving. Connections already open keep
//! the certificate they started with; every new handshake gets the newest one, so a renewal
//! drops nothing.
//!
//! The certificate comes from PEM files (re-read when they change: a mounted Secret, or
//! files cert-manager's CSI driver writes) or straight from a `kubernetes.io/tls` Secret in
//! the operator namespace, followed with a watch (what the controller issues, or a
//! cert-manager Certificate's Secret).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::tls_keys;

/// Where the certificate comes from.
#[derive(Clone)]
pub enum Source {
    /// PEM files: chain and key.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`).
    Secret {
        /// The Secrets of its namespace.
        api: Box<Api<Secret>>,
        /// Its name.
        name: String,
    },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Files { cert, .. } => write!(f, "file {}", cert.display()),
            Source::Secret { name, .. } => write!(f, "Secret {name}"),
        }
    }
}

/// A TLS acceptor that follows its certificate.
pub struct Reloading {
    source: Source,
    acceptor: ArcSwapOption<TlsAcceptor>,
    loaded: watch::Sender<bool>,
    bundle: watch::Sender<Option<String>>,
}

/// A server configuration from PEM text; errors never quote the content.
pub fn config(cert_pem: &[u8], key_pem: &[u8]) -> Result<rustls::ServerConfig, String> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: {e}"))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl Reloading {
    /// An acceptor for `source`. Files are loaded at once (an error if unusable); a Secret
    /// loads when [`Reloading::follow`] first sees it.
    pub fn new(source: Source) -> Result<Arc<Self>, String> {
        let this = Arc::new(Reloading {
            source,
            acceptor: ArcSwapOption::empty(),
            loaded: watch::channel(false).0,
            bundle: watch::channel(None).0,
        });
        if let Source::Files { cert, key } = &this.source {
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let c = config(&read(cert)?, &read(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            this.set(c);
        }
        Ok(this)
    }

    fn set(&self, c: rustls::ServerConfig) {
        self.acceptor
            .store(Some(Arc::new(TlsAcceptor::from(Arc::new(c)))));
        self.loaded.send_replace(true);
    }

    /// The `ca.crt` of the Secret (the operator CA's trust bundle), as it changes.
    pub fn bundle(&self) -> watch::Receiver<Option<String>> {
        self.bundle.subscribe()
    }

    /// Resolves once a certificate is loaded.
    pub async fn ready(&self) {
        let mut rx = self.loaded.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    /// Follows the source until dropped: files every 10 s, a Secret on every change. A new
    /// certificate that cannot be used leaves the old one in place.
    pub async fn follow(self: Arc<Self>) {
        match self.source.clone() {
            Source::Files { cert, key } => {
                let mut seen = modified(&cert).max(modified(&key));
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let now = modified(&cert).max(modified(&key));
                    if now == seen {
                        continue;
                    }
                    match std::fs::read(&cert)
                        .and_then(|c| std::fs::read(&key).map(|k| (c, k)))
                        .map_err(|e| e.to_string())
                        .and_then(|(c, k)| config(&c, &k))
                    {
                        Ok(c) => {
                            self.set(c);
                            seen = now;
                            tracing::info!(source = ?self.source, "TLS certificate reloaded");
                        }
                        Err(e) => {
                            tracing::warn!(source = ?self.source, error = %e, "new TLS certificate unusable; keeping the old one")
                        }
                    }
                }
            }
            Source::Secret { api, name } => {
                let stream = watcher(
                    *api,
                    watcher::Config::default().fields(&format!("metadata.name={name}")),
                )
                .default_backoff()
                .applied_objects();
                futures::pin_mut!(stream);
                let mut seen: Option<(Vec<u8>, Vec<u8>)> = None;
                while let Some(ev) = stream.next().await {
                    let secret = match ev {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(source = ?self.source, error = %e, "watch failed; retrying");
                            continue;
                        }
                    };
                    let data = secret.data.unwrap_or_default();
                    let ca = data
                        .get(tls_keys::CA)
                        .and_then(|c| String::from_utf8(c.0.clone()).ok());
                    self.bundle.send_if_modified(|b| {
                        let changed = *b != ca;
                        if changed {
                            b.clone_from(&ca);
                        }
                        changed
                    });
                    let (Some(c), Some(k)) = (data.get(tls_keys::CERT), data.get(tls_keys::KEY))
                    else {
                        tracing::warn!(source = ?self.source, "Secret has no tls.crt and tls.key yet");
                        continue;
                    };
                    let pair = (c.0.clone(), k.0.clone());
                    if seen.as_ref() == Some(&pair) {
                        continue;
                    }
                    match config(&pair.0, &pair.1) {
                        Ok(c) => {
                            let first = seen.is_none();
                            self.set(c);
                            seen = Some(pair);
                            tracing::info!(source = ?self.source, first, "TLS certificate loaded");
                        }
                        Err(e) => {
                            tracing::warn!(source = ?self.source, error = %e, "TLS certificate in the Secret unusable; keeping the old one")
                        }
                    }
                }
            }
        }
    }
}

/// Serves HTTPS until `stop`, once a certificate is loaded (following its source meanwhile).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<Reloading>,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), std::io::Error> {
    let follower = tokio::spawn(tls.clone().follow());
    let mut stop = std::pin::pin!(stop);
    tokio::select! {
        () = tls.ready() => {}
        () = &mut stop => {
            follower.abort();
            return Ok(());
        }
    }
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let Some(acceptor) = tls.acceptor.load_full() else {
            continue;
        };
        // The peer address, for the brute-force limiter (as `axum::serve` records it).
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        tokio::spawn(async move {
            let Ok(Ok(stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    follower.abort();
    Ok(())
}
