//! The stand-in on a real TCP port, so the operator can run as separate processes against
//! it (the scale benchmark measures their memory that way). The bearer token of a request
//! is taken as its user, so each process's requests are recorded under its own name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::ApiServer;

impl ApiServer {
    /// Serves this API on 127.0.0.1 (plain HTTP) until the runtime ends; returns the address.
    pub async fn serve_tcp(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let server = server.clone();
                            async move {
                                let user = req
                                    .headers()
                                    .get(hyper::header::AUTHORIZATION)
                                    .and_then(|v| v.to_str().ok())
                                    .and_then(|v| v.strip_prefix("Bearer "))
                                    .unwrap_or("anonymous")
                                    .to_owned();
                                let (parts, body) = req.into_parts();
                                let bytes = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                let req = hyper::Request::from_parts(
                                    parts,
                                    kube::client::Body::from(bytes.to_vec()),
                                );
                                Ok::<_, Infallible>(server.serve(user, req).await)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        addr
    }
}

/// Writes a kubeconfig for `addr` whose bearer token is `user`.
pub fn kubeconfig(addr: SocketAddr, user: &str, path: &Path) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://{addr}\nusers:\n- name: {user}\n  user:\n    token: {user}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: {user}\ncurrent-context: standin\n"
    );
    std::fs::write(path, text).unwrap();
}
