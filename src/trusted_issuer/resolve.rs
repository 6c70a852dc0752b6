//! From a `TrustedIssuerSpec` to what the verifier and the fetcher need: the
//! [`IssuerConfig`] (accepted `iss`, audiences, algorithms, skew, application) and the
//! [`Source`] of its keys. Pure: no I/O, no `kube` client.

use std::time::Duration;

use crate::api::trusted_issuer::TrustedIssuerSpec;
use crate::crypto::Jwk;

use super::verify::IssuerConfig;

/// Where an issuer's keys come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// `{issuer}/.well-known/openid-configuration` names the `jwks_uri`; the document's
    /// `issuer` must equal the configured one exactly (RFC 8414 §3.3).
    Discovery {
        /// The configured issuer.
        issuer: String,
    },
    /// The keys are at this URL.
    JwksUri {
        /// The URL.
        uri: String,
    },
    /// The keys are in the spec.
    Inline(Vec<Jwk>),
    /// The cluster's own service-account issuer: discovery document and JWKS read through
    /// the API server (non-resource URLs), so the issuer is known only after a fetch.
    Kubernetes,
    /// An Azure AD tenant: keys at `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`.
    Azure {
        /// Tenant id.
        tenant: String,
        /// Application id the tokens must be issued to.
        app: String,
    },
}

impl Source {
    /// The JWKS URL when it is known without fetching anything.
    pub fn known_jwks_uri(&self) -> Option<String> {
        match self {
            Source::JwksUri { uri } => Some(uri.clone()),
            Source::Azure { tenant, .. } => Some(azure_jwks_uri(tenant)),
            _ => None,
        }
    }

    /// Whether the keys come over the network (and so are refreshed and can age out).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Source::Inline(_))
    }
}

/// A TrustedIssuer resolved from its spec.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What the verifier checks. For [`Source::Kubernetes`] `issuers` is empty until the
    /// discovery document has been read.
    pub config: IssuerConfig,
    /// Where the keys come from.
    pub source: Source,
    /// How often the keys are fetched again.
    pub refresh_interval: Duration,
    /// How long the last good keys are kept after the last successful fetch.
    pub max_key_age: Duration,
}

/// A spec that cannot be used (the schema should have refused it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

/// The Azure v2 issuer of a tenant.
pub fn azure_issuer_v2(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

/// The Azure v1 issuer of a tenant.
pub fn azure_issuer_v1(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// The JWKS of an Azure tenant.
pub fn azure_jwks_uri(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys")
}

/// Whether a URL may be fetched: `https`, or `http` to a loopback host (tests, dev).
pub fn url_allowed(url: &str) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return false;
    };
    match (uri.scheme_str(), uri.host()) {
        (Some("https"), Some(h)) => !h.is_empty(),
        (Some("http"), Some(h)) => is_loopback(h),
        _ => false,
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Resolves one TrustedIssuer. `namespace/name` becomes [`IssuerConfig::key`].
pub fn resolve(
    namespace: &str,
    name: &str,
    spec: &TrustedIssuerSpec,
) -> Result<Resolved, InvalidSpec> {
    let invalid = |m: &str| Err(InvalidSpec(m.to_owned()));
    let sources = usize::from(spec.issuer.is_some())
        + usize::from(spec.kubernetes.is_some())
        + usize::from(spec.azure.is_some());
    if sources != 1 {
        return invalid(
            "set exactly one source: issuer (with optional jwksUri or jwks), kubernetes or azure",
        );
    }
    if spec.jwks_uri.is_some() && spec.jwks.is_some() {
        return invalid("jwksUri and jwks are mutually exclusive");
    }
    if (spec.jwks_uri.is_some() || spec.jwks.is_some()) && spec.issuer.is_none() {
        return invalid("jwksUri and jwks need issuer: the exact iss value tokens must carry");
    }
    if spec.audiences.is_empty() || spec.audiences.iter().any(String::is_empty) {
        return invalid("audiences must name at least one non-empty audience");
    }
    if spec.algorithms.is_empty() {
        return invalid("algorithms must name at least one algorithm");
    }

    let mut issuers = vec![];
    let mut required_app = None;
    let source = if let Some(issuer) = &spec.issuer {
        if !url_allowed(issuer) || issuer.contains(['?', '#']) {
            return invalid(
                "issuer must be an https URL (http only on localhost) without query or fragment",
            );
        }
        issuers.push(issuer.clone());
        if let Some(uri) = &spec.jwks_uri {
            if !url_allowed(uri) {
                return invalid("jwksUri must be an https URL (http only on localhost)");
            }
            Source::JwksUri { uri: uri.clone() }
        } else if let Some(set) = &spec.jwks {
            if set.keys.is_empty() {
                return invalid("jwks must hold at least one key");
            }
            Source::Inline(set.keys.clone())
        } else {
            Source::Discovery {
                issuer: issuer.clone(),
            }
        }
    } else if let Some(azure) = &spec.azure {
        let guid = |s: &str| {
            s.len() == 36
                && s.char_indices().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        };
        if !guid(&azure.tenant_id) || !guid(&azure.application_id) {
            return invalid("azure tenantId and applicationId must be GUIDs");
        }
        issuers.push(azure_issuer_v2(&azure.tenant_id));
        issuers.push(azure_issuer_v1(&azure.tenant_id));
        required_app = Some(azure.application_id.clone());
        Source::Azure {
            tenant: azure.tenant_id.clone(),
            app: azure.application_id.clone(),
        }
    } else {
        Source::Kubernetes
    };

    Ok(Resolved {
        config: IssuerConfig {
            key: format!("{namespace}/{name}"),
            issuers,
            audiences: spec.audiences.clone(),
            algorithms: spec.algorithms.clone(),
            clock_skew: spec.clock_skew.as_std(),
            required_app,
        },
        source,
        refresh_interval: spec.refresh_interval.as_std(),
        max_key_age: spec.max_key_age.as_std(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::trusted_issuer::JwsAlgorithm;

    fn spec(yaml: &str) -> TrustedIssuerSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn discovery_with_defaults() {
        let r = resolve(
            "ns",
            "idp",
            &spec("issuer: https://idp.example.com\naudiences: [api://x]\n"),
        )
        .unwrap();
        assert_eq!(r.config.key, "ns/idp");
        assert_eq!(r.config.issuers, vec!["https://idp.example.com".to_owned()]);
        assert_eq!(
            r.config.algorithms,
            vec![JwsAlgorithm::RS256, JwsAlgorithm::ES256]
        );
        assert_eq!(r.config.clock_skew, Duration::from_secs(60));
        assert_eq!(r.refresh_interval, Duration::from_secs(3600));
        assert_eq!(r.max_key_age, Duration::from_secs(86400));
        assert_eq!(
            r.source,
            Source::Discovery {
                issuer: "https://idp.example.com".into()
            }
        );
    }

    #[test]
    fn presets_and_explicit_sources() {
        let r = resolve(
            "ns",
            "az",
            &spec(
                "azure: {tenantId: 11111111-2222-3333-4444-555555555555, applicationId: aaaaaaaa-2222-3333-4444-555555555555}\naudiences: [api://x]\n",
            ),
        )
        .unwrap();
        assert_eq!(
            r.config.issuers,
            vec![
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
                    .to_owned(),
                "https://sts.windows.net/11111111-2222-3333-4444-555555555555/".to_owned()
            ]
        );
        assert_eq!(
            r.config.required_app.as_deref(),
            Some("aaaaaaaa-2222-3333-4444-555555555555")
        );
        assert_eq!(
            r.source.known_jwks_uri().as_deref(),
            Some(
                "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys"
            )
        );

        let k = resolve("ns", "k", &spec("kubernetes: {}\naudiences: [api://x]\n")).unwrap();
        assert_eq!(k.source, Source::Kubernetes);
        assert!(k.config.issuers.is_empty());

        let j = resolve(
            "ns",
            "j",
            &spec(
                "issuer: http://127.0.0.1:8080\njwksUri: http://localhost:9/keys\naudiences: [a]\n",
            ),
        )
        .unwrap();
        assert_eq!(
            j.source,
            Source::JwksUri {
                uri: "http://localhost:9/keys".into()
            }
        );
        let inline = resolve(
            "ns",
            "i",
            &spec("issuer: https://i\njwks: {keys: [{kty: EC, crv: P-256, x: AA, y: AA}]}\naudiences: [a]\n"),
        )
        .unwrap();
        assert!(matches!(inline.source, Source::Inline(ref k) if k.len() == 1));
        assert!(!inline.source.is_remote());
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        for (yaml, why) in [
            ("audiences: [a]\n", "exactly one source"),
            (
                "issuer: https://a\nkubernetes: {}\naudiences: [a]\n",
                "exactly one source",
            ),
            (
                "issuer: http://idp.example.com\naudiences: [a]\n",
                "https URL",
            ),
            (
                "issuer: https://a\njwksUri: http://example.com/k\naudiences: [a]\n",
                "jwksUri",
            ),
            (
                "kubernetes: {}\njwksUri: https://a/k\naudiences: [a]\n",
                "need issuer",
            ),
            ("issuer: https://a\naudiences: []\n", "audiences"),
            (
                "azure: {tenantId: nope, applicationId: nope}\naudiences: [a]\n",
                "GUID",
            ),
        ] {
            let err = resolve("ns", "x", &spec(yaml)).unwrap_err();
            assert!(err.0.contains(why), "{yaml}: {err}");
        }
    }

    #[test]
    fn url_rules() {
        assert!(url_allowed("https://idp.example.com/x"));
        assert!(url_allowed("http://127.0.0.1:1234/"));
        assert!(url_allowed("http://[::1]:1234/"));
        assert!(url_allowed("http://localhost/"));
        assert!(!url_allowed("http://10.0.0.1/"));
        assert!(!url_allowed("ftp://x/"));
        assert!(!url_allowed("not a url"));
    }
}
