//! The four custom resource kinds of `s2s.dev/v1alpha1`, and the small types they share.
//!
//! * [`ServiceAccount`]: a machine identity: what it may ask for (`scopes`, `audiences`), how
//!   it authenticates (`clientSecret`, `privateKeyJwt`, `federated`) and, optionally, the API it
//!   exposes (`api`).
//! * [`TrustedIssuer`]: an identity provider whose JWTs the token server accepts.
//! * [`TokenGrant`]: who may get a token for which audience, with which scopes. It lives in the
//!   namespace of the resource owner, so namespace RBAC decides who can open an API.
//! * [`AccessToken`]: a token kept renewed in a Secret in the client's namespace, as far as
//!   the TokenGrants allow.
//!
//! This module holds types and nothing else: no client, no I/O. Invariants that the API server
//! can hold are written into the schema (CEL `x-kubernetes-validations`, lengths, enums) so that
//! `kubectl apply` refuses nonsense; the rest is checked by the reconcilers and reported as
//! `Ready=False` with a reason.

pub mod access_token;
pub mod conditions;
pub mod service_account;
pub mod token_grant;
pub mod trusted_issuer;
pub mod yaml;

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::crypto::{Jwk, KeyAlgorithm};
pub use access_token::{AccessToken, AccessTokenSpec, AccessTokenStatus};
pub use conditions::Condition;
pub use service_account::{ServiceAccount, ServiceAccountSpec, ServiceAccountStatus};
pub use token_grant::{TokenGrant, TokenGrantSpec, TokenGrantStatus};
pub use trusted_issuer::{TrustedIssuer, TrustedIssuerSpec, TrustedIssuerStatus};

/// API group of every kind.
pub const GROUP: &str = "s2s.dev";
/// The one served version.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every kind.
pub const API_VERSION: &str = "s2s.dev/v1alpha1";
/// Category shared by the kinds, so `kubectl get s2s -A` lists everything.
pub const CATEGORY: &str = "s2s";

/// The longest lifetime any access token may have. The operator-wide `--max-token-lifetime`
/// can lower it, never raise it; the schema refuses anything longer.
pub const MAX_TOKEN_LIFETIME: &str = "24h";
/// The shortest token lifetime the schema accepts.
pub const MIN_TOKEN_LIFETIME: &str = "1m";
/// The shortest credential rotation period the schema accepts.
pub const MIN_ROTATION_PERIOD: &str = "1h";

/// Regular expression (RE2 and Rust `regex` alike) for a Go duration as `metav1.Duration`
/// writes it: `90s`, `15m`, `1h30m`, `2160h`. Days are not a Go unit.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";
/// RFC 1123 subdomain, the rule for Secret names (at most 253 characters).
pub const DNS1123_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// RFC 1123 label, the rule for namespace names (at most 63 characters).
pub const DNS1123_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// An RFC 6749 §3.3 scope token (printable ASCII but space, `"` and `\`), in which `*` may stand
/// only last, as the wildcard that covers a subtree (`fr:idc:esv:*`).
pub const SCOPE_PATTERN: &str = r"^[!#-)+-\[\]-~]+\*?$";
/// A scope an API defines or a client asks for: a scope token with no wildcard.
pub const SCOPE_NAME_PATTERN: &str = r"^[!#-)+-\[\]-~]+$";
/// An audience: a URI or a plain name, printable ASCII without spaces.
pub const AUDIENCE_PATTERN: &str = r"^[!-~]+$";

/// The most scopes one list may hold.
pub const MAX_SCOPES: usize = 64;
/// The most audiences one list may hold.
pub const MAX_AUDIENCES: usize = 32;

/// A duration written the way Kubernetes writes `metav1.Duration` (`30s`, `15m`, `1h30m`).
///
/// A thin wrapper over [`kube::core::Duration`] whose schema adds the pattern, so a malformed
/// value is refused by the API server before any CEL rule sees it.
///
/// It prints in the largest whole unit (`1h`, `90m`, `45s`, `1500ms`), so schema defaults and
/// generated YAML read the way people write them.
///
/// Reading one refuses a negative part (`1h-5m`) and a total beyond [`MAX_DURATION_SECS`]
/// with an error: `kube`'s parser panics on both, and a pattern-conforming value such as
/// `9999999999999999999999h` passes the schema, so it would take down whatever watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub kube::core::Duration);

/// The longest duration read (about 31 million years): far below what
/// [`std::time::Duration`] holds, so no sum of parts overflows.
pub const MAX_DURATION_SECS: f64 = 1e15;

/// Why a duration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    /// Not a Go duration.
    #[error(transparent)]
    Parse(#[from] kube::core::duration::ParseError),
    /// A negative part, or longer than [`MAX_DURATION_SECS`].
    #[error("duration out of range")]
    OutOfRange,
}

/// Whether `kube`'s parser can read `s` without panicking: every part non-negative and the sum
/// within range. Malformed text passes, for the parser to report.
fn in_range(s: &str) -> bool {
    let mut rest = s.trim_start_matches('+').trim_start_matches('-');
    let mut total = 0.0;
    while !rest.is_empty() && rest != "0" {
        let Some(unit_start) = rest.find(char::is_alphabetic) else {
            return true;
        };
        let (value, after) = rest.split_at(unit_start);
        let Ok(value) = value.parse::<f64>() else {
            return true;
        };
        let unit_end = after
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "\u{00b5}s" | "\u{03bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return true,
        };
        if value.is_nan() || value < 0.0 {
            return false;
        }
        // Checked part by part: the parser multiplies each part before it reads the next.
        total += value * seconds;
        if !total.is_finite() || total > MAX_DURATION_SECS {
            return false;
        }
        rest = next;
    }
    true
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Duration {
    /// The duration as a [`std::time::Duration`] (durations here are never negative: the
    /// pattern has no sign).
    pub fn as_std(&self) -> std::time::Duration {
        std::time::Duration::from(self.0)
    }
}

impl std::str::FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !in_range(s) {
            return Err(DurationError::OutOfRange);
        }
        Ok(Duration(s.parse()?))
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.as_std();
        let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
        match (secs, nanos) {
            (0, 0) => f.write_str("0s"),
            (s, 0) if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            (s, 0) if s % 60 == 0 => write!(f, "{}m", s / 60),
            (s, 0) => write!(f, "{s}s"),
            (_, n) if n % 1_000_000 == 0 => write!(f, "{}ms", d.as_millis()),
            _ => write!(f, "{}ns", d.as_nanos()),
        }
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d.into())
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "maxLength": 32,
            "pattern": DURATION_PATTERN,
        })
    }
}

/// A reference to an object of this API by name, in the referring object's namespace unless
/// `namespace` says otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the object; the referring object's own namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl ObjectRef {
    /// The namespace this reference points into, given the referring object's namespace.
    pub fn namespace_or<'a>(&'a self, own: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(own)
    }
}

/// CEL rules shared by several kinds, built from the patterns above so each rule is written
/// once.
pub(crate) mod rules {
    use kube::core::{Message, Rule};

    /// A string field matches `pattern`; `what` names it in the message.
    pub fn matches(pattern: &str, what: &str) -> Rule {
        Rule::new(format!("self.matches('{}')", cel_quote(pattern)))
            .message(Message::Message(what.to_owned()))
    }

    /// Every element of a string list matches `pattern`.
    pub fn all_match(pattern: &str, what: &str) -> Rule {
        Rule::new(format!("self.all(x, x.matches('{}'))", cel_quote(pattern)))
            .message(Message::Message(what.to_owned()))
    }

    /// A duration field lies within `[min, max]` (either bound may be absent).
    pub fn duration_within(min: Option<&str>, max: Option<&str>, what: &str) -> Rule {
        let expr = match (min, max) {
            (Some(lo), Some(hi)) => {
                format!("duration(self) >= duration('{lo}') && duration(self) <= duration('{hi}')")
            }
            (Some(lo), None) => format!("duration(self) >= duration('{lo}')"),
            (None, Some(hi)) => format!("duration(self) <= duration('{hi}')"),
            (None, None) => "true".to_owned(),
        };
        Rule::new(expr).message(Message::Message(what.to_owned()))
    }

    /// The value may not change once set.
    pub fn immutable(what: &str) -> Rule {
        Rule::new("self == oldSelf").message(Message::Message(format!("{what} is immutable")))
    }

    /// `grace < rotateEvery` for the two optional rotation fields of a credential.
    pub fn grace_shorter_than_rotation() -> Rule {
        Rule::new(
            "!has(self.gracePeriod) || !has(self.rotateEvery) || \
             duration(self.gracePeriod) < duration(self.rotateEvery)",
        )
        .message("gracePeriod must be shorter than rotateEvery")
    }

    /// Escapes a regular expression for a single-quoted CEL string literal.
    fn cel_quote(pattern: &str) -> String {
        pattern.replace('\\', "\\\\").replace('\'', "\\'")
    }
}

/// Every CRD of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        ServiceAccount::crd(),
        TrustedIssuer::crd(),
        TokenGrant::crd(),
        AccessToken::crd(),
    ]
}

/// The file name under `crds/` (and the chart's `crds/`) for a CRD: `<group>_<plural>.yaml`,
/// the layout controller-gen uses.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as the YAML document that `crdgen` prints and `crds/` holds.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    yaml::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_strings() {
        let d: Duration = "1h30m".parse().unwrap();
        assert_eq!(d.as_std(), std::time::Duration::from_secs(5400));
        let json = serde_json::to_string(&d).unwrap();
        let back: Duration = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!("1d".parse::<Duration>().is_err());
        // kube's parser panics on these; they are errors here.
        for bad in [
            "9999999999999999999999h",
            "1h-5m",
            "-1h-1h",
            "1e400h",
            "1.5h-0.1s",
        ] {
            assert!(bad.parse::<Duration>().is_err(), "{bad}");
            assert!(serde_json::from_str::<Duration>(&format!("\"{bad}\"")).is_err());
        }
        for (text, shown) in [
            ("1h", "1h"),
            ("90m", "90m"),
            ("3600s", "1h"),
            ("1500ms", "1500ms"),
            ("45s", "45s"),
        ] {
            assert_eq!(text.parse::<Duration>().unwrap().to_string(), shown);
        }
    }

    #[test]
    fn object_ref_defaults_to_own_namespace() {
        let r = ObjectRef {
            name: "a".into(),
            namespace: None,
        };
        assert_eq!(r.namespace_or("team-a"), "team-a");
        let r = ObjectRef {
            name: "a".into(),
            namespace: Some("b".into()),
        };
        assert_eq!(r.namespace_or("team-a"), "b");
    }

    #[test]
    fn crd_file_names_follow_controller_gen() {
        let names: Vec<_> = crds().iter().map(crd_file_name).collect();
        assert_eq!(
            names,
            [
                "s2s.dev_serviceaccounts.yaml",
                "s2s.dev_trustedissuers.yaml",
                "s2s.dev_tokengrants.yaml",
                "s2s.dev_accesstokens.yaml"
            ]
        );
    }
}
