//! The plugin's I/O plumbing: the Kubernetes client (as kubectl would build it), object
//! references (`KIND/NAME`), API errors turned into what to do, and the token server reached
//! through the API server's service proxy (or a `--server-url`).

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::{CliError, Global, Result};

/// Largest answer read from the token server.
const MAX_BODY: usize = 1024 * 1024;
/// How long one request to the token server may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The four kinds, as the plugin names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// `serviceaccounts.s2s.dev`.
    ServiceAccount,
    /// `trustedissuers.s2s.dev`.
    TrustedIssuer,
    /// `tokengrants.s2s.dev`.
    TokenGrant,
    /// `accesstokens.s2s.dev`.
    AccessToken,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [
        Kind::ServiceAccount,
        Kind::TrustedIssuer,
        Kind::TokenGrant,
        Kind::AccessToken,
    ];

    /// The kind a user typed: singular, plural, short name or `….s2s.dev`. Not `sa`: kubectl
    /// users mean the core ServiceAccount by it.
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        let s = s.strip_suffix(".s2s.dev").unwrap_or(&s);
        match s {
            "serviceaccount" | "serviceaccounts" | "s2ssa" => Some(Kind::ServiceAccount),
            "trustedissuer" | "trustedissuers" | "tiss" => Some(Kind::TrustedIssuer),
            "tokengrant" | "tokengrants" | "tgrant" => Some(Kind::TokenGrant),
            "accesstoken" | "accesstokens" | "s2stoken" => Some(Kind::AccessToken),
            _ => None,
        }
    }

    /// The resource name kubectl knows (`serviceaccounts.s2s.dev`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "serviceaccounts.s2s.dev",
            Kind::TrustedIssuer => "trustedissuers.s2s.dev",
            Kind::TokenGrant => "tokengrants.s2s.dev",
            Kind::AccessToken => "accesstokens.s2s.dev",
        }
    }

    /// The short form used in `KIND/NAME`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::ServiceAccount => "serviceaccount",
            Kind::TrustedIssuer => "trustedissuer",
            Kind::TokenGrant => "tokengrant",
            Kind::AccessToken => "accesstoken",
        }
    }
}

/// Parses `KIND/NAME`; `only` restricts the kinds a command accepts.
pub fn parse_ref(s: &str, only: &[Kind]) -> Result<(Kind, String)> {
    let usage = || {
        let kinds: Vec<&str> = only.iter().map(|k| k.singular()).collect();
        CliError::new(format!("{s:?} is not KIND/NAME"))
            .hint(format!("write it as {}/NAME", kinds.join("/NAME or ")))
    };
    let (kind, name) = s.split_once('/').ok_or_else(usage)?;
    let kind = Kind::parse(kind).ok_or_else(usage)?;
    if name.is_empty() || name.contains('/') || !only.contains(&kind) {
        return Err(usage());
    }
    Ok((kind, name.to_owned()))
}

/// A connection to the cluster.
#[derive(Clone)]
pub struct Kube {
    /// The client.
    pub client: Client,
    /// `-n`, else the context's namespace.
    pub namespace: String,
}

/// Connects as kubectl would: `--kubeconfig` or `KUBECONFIG` or `~/.kube/config`, the
/// `--context` or the current one; in a Pod with no kubeconfig, its service account.
pub async fn connect(g: &Global) -> Result<Kube> {
    let options = KubeConfigOptions {
        context: g.context.clone(),
        cluster: None,
        user: None,
    };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| {
                CliError::new(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            Config::from_custom_kubeconfig(kc, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    };
    let config = match config {
        Ok(c) => c,
        Err(e) if g.kubeconfig.is_none() && g.context.is_none() => {
            Config::incluster().map_err(|_| {
                CliError::new(format!("no usable kubeconfig: {e}"))
                    .hint("set KUBECONFIG or pass --kubeconfig FILE (and --context NAME)")
            })?
        }
        Err(e) => {
            return Err(CliError::new(format!("kubeconfig: {e}"))
                .hint("check --kubeconfig and --context (kubectl config get-contexts)"));
        }
    };
    let namespace = g
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)
        .map_err(|e| CliError::new(format!("cannot build a Kubernetes client: {e}")))?;
    Ok(Kube { client, namespace })
}

/// The release name used when none is given and none is found.
pub const DEFAULT_RELEASE: &str = "s2s-operator";

/// The release among the chart's token server Services (`<release>-token-server`, labelled
/// `app.kubernetes.io/name=s2s-operator` and `app.kubernetes.io/instance=<release>`).
pub fn release_of(services: &[Service]) -> Option<String> {
    services.iter().find_map(|s| {
        let instance = s
            .metadata
            .labels
            .as_ref()?
            .get("app.kubernetes.io/instance")?;
        let name = s.metadata.name.as_deref()?;
        (name == format!("{instance}-token-server")).then(|| instance.clone())
    })
}

/// `--release`, else the one installed in the operator namespace, else [`DEFAULT_RELEASE`].
pub async fn release(kube: &Kube, g: &Global) -> String {
    if let Some(r) = &g.release {
        return r.clone();
    }
    let api: Api<Service> = Api::namespaced(kube.client.clone(), &g.operator_namespace);
    api.list(&ListParams::default().labels("app.kubernetes.io/name=s2s-operator"))
        .await
        .ok()
        .and_then(|l| release_of(&l.items))
        .unwrap_or_else(|| DEFAULT_RELEASE.to_owned())
}

/// The HTTP status of an API error, if it is one.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// An API error on `verb resource[/name]` in `ns` turned into what to do.
pub fn api_error(
    e: kube::Error,
    verb: &str,
    resource: &str,
    name: Option<&str>,
    ns: Option<&str>,
) -> CliError {
    let target = match name {
        Some(n) => format!("{resource}/{n}"),
        None => resource.to_owned(),
    };
    let place = ns.map(|n| format!(" in namespace {n}")).unwrap_or_default();
    let nsflag = ns.map(|n| format!(" -n {n}")).unwrap_or_default();
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            if name.is_some() && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) {
                CliError::new(format!("{target} not found{place}")).hint(format!(
                    "list what exists with `kubectl get {resource}{nsflag}` (or `kubectl s2s status -A`); \
                     is -n right?"
                ))
            } else {
                CliError::new(format!(
                    "the resource {resource} is not served by this cluster"
                ))
                .hint(
                    "install the CRDs (`kubectl apply -f crds/`, or the Helm chart) and run \
                         `kubectl s2s check`",
                )
            }
        }
        kube::Error::Api(s) if s.code == 403 => {
            CliError::new(format!("forbidden: you may not {verb} {target}{place}")).hint(format!(
                "ask for a Role granting `{verb}` on {resource}{place} \
                 (check with `kubectl auth can-i {verb} {target}{nsflag}`)"
            ))
        }
        kube::Error::Api(s) if s.code == 401 => CliError::new(format!(
            "the API server does not accept your credentials: {}",
            s.message
        ))
        .hint("log in again or refresh the kubeconfig's token"),
        kube::Error::Api(s) if s.code == 422 => CliError::new(format!(
            "the API server refused to {verb} {target}{place}: {}",
            s.message
        )),
        kube::Error::Api(s) => CliError::new(format!(
            "{verb} {target}{place}: {} ({})",
            s.message, s.code
        )),
        other => CliError::new(format!("{verb} {target}{place}: {other}"))
            .hint("is the cluster reachable? (`kubectl cluster-info`)"),
    }
}

/// An answer of the token server.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// An OAuth error answer as `error: description`, else the status.
    pub fn oauth_error(&self) -> String {
        match self.json() {
            Some(v) if v.get("error").is_some() => format!(
                "{}{}",
                v["error"].as_str().unwrap_or_default(),
                v.get("error_description")
                    .and_then(|d| d.as_str())
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            _ => format!("HTTP {}", self.status),
        }
    }
}

/// The token server, through the API server's service proxy or at a URL.
pub enum TokenServer {
    /// `/api/v1/namespaces/NS/services/SCHEME:NAME:PORT/proxy`.
    Proxy {
        /// The Kubernetes client.
        client: Client,
        /// The proxy path prefix.
        base: String,
        /// The Service, for messages.
        service: String,
        /// Its namespace.
        namespace: String,
    },
    /// `--server-url`.
    Direct {
        /// HTTP(S) client.
        http: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
        /// Base URL.
        base: String,
    },
}

/// The service proxy path for a Service's port.
pub fn proxy_base(namespace: &str, service: &Service) -> Option<String> {
    let name = service.metadata.name.as_deref()?;
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .or_else(|| ports.iter().find(|p| p.name.as_deref() == Some("http")))
        .or_else(|| ports.first())?;
    let scheme = if port.name.as_deref() == Some("https") || port.port == 443 {
        "https"
    } else {
        "http"
    };
    let port_ref = port
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| port.port.to_string());
    Some(format!(
        "/api/v1/namespaces/{namespace}/services/{scheme}:{name}:{port_ref}/proxy"
    ))
}

impl TokenServer {
    /// The token server of the installation `g` names.
    pub async fn locate(kube: &Kube, g: &Global) -> Result<TokenServer> {
        if let Some(url) = &g.server_url {
            let http = HttpClient::builder(TokioExecutor::new())
                .build(crate::trusted_issuer::fetch::https_connector(vec![]));
            return Ok(TokenServer::Direct {
                http,
                base: url.trim_end_matches('/').to_owned(),
            });
        }
        let ns = &g.operator_namespace;
        let name = format!("{}-token-server", release(kube, g).await);
        let api: Api<Service> = Api::namespaced(kube.client.clone(), ns);
        let svc =
            match api.get(&name).await {
                Ok(s) => s,
                Err(e) if api_code(&e) == Some(404) => {
                    return Err(CliError::new(format!(
                    "no token server Service {name} in namespace {ns}"
                ))
                .hint(
                    "name the installation with --operator-namespace and --release (Helm release \
                     name), or reach the token server directly with --server-url URL",
                ));
                }
                Err(e) => {
                    return Err(api_error(e, "get", "services", Some(&name), Some(ns)).hint(format!(
                    "the token server is reached through the service proxy: ask for a Role in \
                     {ns} granting `get` on services (resourceNames: [{name}]) and `get`, \
                     `create` on services/proxy (resourceNames: [\"http:{name}:http\"], or \
                     https:{name}:https with TLS), or pass --server-url URL"
                )));
                }
            };
        let base = proxy_base(ns, &svc)
            .ok_or_else(|| CliError::new(format!("Service {ns}/{name} has no port")))?;
        Ok(TokenServer::Proxy {
            client: kube.client.clone(),
            base,
            service: name,
            namespace: ns.clone(),
        })
    }

    /// Where requests go, for messages.
    pub fn describe(&self) -> String {
        match self {
            TokenServer::Proxy {
                service, namespace, ..
            } => format!("the token server (service {namespace}/{service}, via the API server)"),
            TokenServer::Direct { base, .. } => format!("the token server at {base}"),
        }
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        self.send(hyper::Method::GET, path, None).await
    }

    /// `POST path` with a form body. No `Authorization` header: the service proxy would
    /// drop it, so client authentication goes in the form.
    pub async fn post_form(&self, path: &str, form: String) -> Result<Answer> {
        self.send(hyper::Method::POST, path, Some(form)).await
    }

    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        form: Option<String>,
    ) -> Result<Answer> {
        let verb = if method == hyper::Method::POST {
            "create"
        } else {
            "get"
        };
        let uri = match self {
            TokenServer::Proxy { base, .. } => format!("{base}{path}"),
            TokenServer::Direct { base, .. } => format!("{base}{path}"),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&uri)
            .header(hyper::header::ACCEPT, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("kubectl-s2s/", env!("CARGO_PKG_VERSION")),
            );
        if form.is_some() {
            req = req.header(
                hyper::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        }
        let body = Bytes::from(form.unwrap_or_default());
        let unreachable = |e: String| {
            CliError::new(format!("cannot reach {}: {e}", self.describe()))
                .hint("is the token server running? `kubectl s2s check` says more")
        };
        let work = async {
            match self {
                TokenServer::Proxy {
                    client,
                    base,
                    service,
                    namespace,
                } => {
                    let req = req
                        .body(kube::client::Body::from(body.to_vec()))
                        .map_err(|e| unreachable(e.to_string()))?;
                    let resp = client
                        .send(req)
                        .await
                        .map_err(|e| unreachable(e.to_string()))?;
                    let status = resp.status().as_u16();
                    let body = Limited::new(resp.into_body(), MAX_BODY)
                        .collect()
                        .await
                        .map_err(|e| unreachable(e.to_string()))?
                        .to_bytes();
                    let answer = Answer { status, body };
                    proxy_failure(&answer, verb, base, service, namespace).map_or(Ok(answer), Err)
                }
                TokenServer::Direct { http, .. } => {
                    let req = req
                        .body(Full::new(body))
                        .map_err(|e| unreachable(e.to_string()))?;
                    let resp = http
                        .request(req)
                        .await
                        .map_err(|e| unreachable(innermost(&e)))?;
                    let status = resp.status().as_u16();
                    let body = Limited::new(resp.into_body(), MAX_BODY)
                        .collect()
                        .await
                        .map_err(|e| unreachable(e.to_string()))?
                        .to_bytes();
                    Ok(Answer { status, body })
                }
            }
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))?
    }
}

/// An answer that came from the API server's proxy itself (a `Status`), not the token server.
/// `base` is the proxy path; its `SCHEME:NAME:PORT` segment is the name RBAC checks for
/// `services/proxy`.
pub fn proxy_failure(
    answer: &Answer,
    verb: &str,
    base: &str,
    service: &str,
    ns: &str,
) -> Option<CliError> {
    let v = answer.json()?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("Status") {
        return None;
    }
    let message = v["message"].as_str().unwrap_or_default().to_owned();
    let proxy_name = base.rsplit('/').nth(1).unwrap_or(service);
    Some(match answer.status {
        403 => CliError::new(format!(
            "forbidden: you may not {verb} services/proxy {proxy_name} in namespace {ns} (the \
             API server's way to the token server)"
        ))
        .hint(format!(
            "ask for a Role in {ns} granting `get` and `create` on services/proxy with \
             resourceNames: [\"{proxy_name}\"] (the proxy names the Service's port so), or \
             reach the token server directly with --server-url URL"
        )),
        503 => CliError::new(format!(
            "the token server Service {ns}/{service} has no ready endpoint: {message}"
        ))
        .hint(format!(
            "is the token server running? `kubectl -n {ns} get pods,endpoints`, then \
             `kubectl s2s check`"
        )),
        code => CliError::new(format!(
            "the API server's proxy to {ns}/{service} answered {code}: {message}"
        )),
    })
}

fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_every_name_kubectl_knows() {
        for s in [
            "serviceaccount/a",
            "serviceaccounts/a",
            "s2ssa/a",
            "serviceaccount.s2s.dev/a",
        ] {
            assert_eq!(
                parse_ref(s, &Kind::ALL).unwrap(),
                (Kind::ServiceAccount, "a".into())
            );
        }
        assert_eq!(
            parse_ref("tgrant/g", &Kind::ALL).unwrap().0,
            Kind::TokenGrant
        );
        for s in [
            "accesstoken/t",
            "accesstokens/t",
            "s2stoken/t",
            "accesstokens.s2s.dev/t",
            "AccessToken/t",
        ] {
            assert_eq!(
                parse_ref(s, &Kind::ALL).unwrap(),
                (Kind::AccessToken, "t".into())
            );
        }
        assert_eq!(Kind::AccessToken.resource(), "accesstokens.s2s.dev");
        let e = parse_ref("tokengrant/g", &[Kind::ServiceAccount]).unwrap_err();
        assert!(e.hint.unwrap().contains("serviceaccount/NAME"));
        assert!(parse_ref("billing-worker", &Kind::ALL).is_err());
        assert!(parse_ref("pod/x", &Kind::ALL).is_err());
        // `sa` is kubectl's name for the core ServiceAccount: not ours.
        assert!(parse_ref("sa/x", &Kind::ALL).is_err());
    }

    #[test]
    fn the_release_is_read_from_the_charts_labels() {
        let svc = |name: &str, instance: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": instance}}
            }))
            .unwrap()
        };
        assert_eq!(
            release_of(&[
                svc("s2s-controller-metrics", "s2s"),
                svc("s2s-token-server", "s2s")
            ]),
            Some("s2s".into())
        );
        assert_eq!(release_of(&[svc("s2s-controller-metrics", "s2s")]), None);
    }

    #[test]
    fn the_proxy_path_prefers_https_and_names_the_port() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "s2s-operator-token-server"},
            "spec": {"ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        assert_eq!(
            proxy_base("s2s-system", &svc).unwrap(),
            "/api/v1/namespaces/s2s-system/services/http:s2s-operator-token-server:http/proxy"
        );
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ts"},
            "spec": {"ports": [{"name": "https", "port": 443}]}
        }))
        .unwrap();
        assert_eq!(
            proxy_base("ns", &svc).unwrap(),
            "/api/v1/namespaces/ns/services/https:ts:https/proxy"
        );
    }

    #[test]
    fn a_forbidden_proxy_names_the_missing_permission() {
        let a = Answer {
            status: 403,
            body: Bytes::from_static(
                br#"{"kind":"Status","status":"Failure","reason":"Forbidden","code":403}"#,
            ),
        };
        let base = "/api/v1/namespaces/s2s-system/services/http:ts:http/proxy";
        let e = proxy_failure(&a, "create", base, "ts", "s2s-system").unwrap();
        assert!(e.message.contains("services/proxy http:ts:http"), "{e}");
        let hint = e.hint.unwrap();
        assert!(
            hint.contains(r#"resourceNames: ["http:ts:http"]"#),
            "{hint}"
        );
        assert!(hint.contains("--server-url"));
        let oauth = Answer {
            status: 401,
            body: Bytes::from_static(br#"{"error":"invalid_client"}"#),
        };
        assert!(proxy_failure(&oauth, "create", base, "ts", "ns").is_none());
        assert_eq!(oauth.oauth_error(), "invalid_client");
    }
}
