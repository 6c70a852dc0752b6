//! HTTPS for the token server: rustls (aws-lc-rs) over the same axum router, with the
//! certificate re-read when its files change (cert-manager renews them in place).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::ServeError;

/// A TLS acceptor that follows its certificate files.
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    acceptor: ArcSwap<TlsAcceptor>,
    loaded: std::sync::Mutex<Option<SystemTime>>,
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &PathBuf, key: &PathBuf) -> Result<TlsAcceptor, String> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", cert.display()));
    }
    // The error names the file, never its content.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

impl Reloading {
    /// Loads the files once; fails if they are unusable.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        let acceptor = load(&cert, &key)?;
        let loaded = modified(&cert).max(modified(&key));
        Ok(Self {
            cert,
            key,
            acceptor: ArcSwap::from_pointee(acceptor),
            loaded: std::sync::Mutex::new(loaded),
        })
    }

    /// Re-reads the files if they changed; keeps the old certificate if the new one fails.
    fn refresh(&self) {
        let now = modified(&self.cert).max(modified(&self.key));
        let mut loaded = self.loaded.lock().expect("not poisoned");
        if now == *loaded {
            return;
        }
        match load(&self.cert, &self.key) {
            Ok(a) => {
                self.acceptor.store(Arc::new(a));
                *loaded = now;
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "new TLS certificate unusable; keeping the old one")
            }
        }
    }
}

/// Serves HTTPS until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Reloading,
    router: axum::Router,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let tls = Arc::new(tls);
    let reloader = {
        let tls = tls.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                tls.refresh();
            }
        })
    };
    let mut stop = std::pin::pin!(stop);
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
        let acceptor = tls.acceptor.load_full();
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
    reloader.abort();
    Ok(())
}
