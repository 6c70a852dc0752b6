//! `TrustedIssuer`: an identity provider whose JWTs the token server accepts, for federated
//! ServiceAccounts, the JWT-bearer grant (RFC 7523 §2.1) and token exchange (RFC 8693).
//!
//! Exactly one source says who the issuer is: `issuer` (a URL; keys by discovery, or from
//! `jwksUri`, or inline `jwks`), the `kubernetes` preset (the cluster's own service-account
//! issuer) or the `azure` preset.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;
use super::{AUDIENCE_PATTERN, Condition, Duration, Jwk, MAX_AUDIENCES};
// Defined with the other algorithm names in `crypto`, which the token core may use and
// this module (a kube CustomResource) it may not.
pub use crate::crypto::JwsAlgorithm;

/// An identity provider whose JWTs are accepted.
// Each `printcolumn(...)` repeats `type_ = …`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "s2s.dev",
    version = "v1alpha1",
    kind = "TrustedIssuer",
    namespaced,
    status = "TrustedIssuerStatus",
    shortname = "tiss",
    category = "s2s",
    derive = "PartialEq",
    doc = "An identity provider (any OIDC issuer, Azure AD, the cluster's own service-account issuer) whose JWTs the token server accepts.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Issuer", type_ = "string", json_path = ".status.issuer"),
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.issuer) ? 1 : 0) + (has(self.kubernetes) ? 1 : 0) + (has(self.azure) ? 1 : 0) == 1"
).message("set exactly one source: issuer (with optional jwksUri or jwks), kubernetes or azure"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.jwksUri) || !has(self.jwks)")
    .message("jwksUri and jwks are mutually exclusive"))]
#[x_kube(validation = kube::core::Rule::new("!(has(self.jwksUri) || has(self.jwks)) || has(self.issuer)")
    .message("jwksUri and jwks need issuer: the exact iss value tokens must carry"))]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerSpec {
    /// The exact `iss` value of the issuer's tokens, an `https` URL (`http` only on
    /// loopback). Without `jwksUri` or `jwks`, keys come from the issuer's
    /// `/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rules::matches(
        r"^(https://[^\s/?#]+|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?)(/[^\s?#]*)?$",
        "issuer must be an https URL (http only on localhost) without query or fragment"))]
    pub issuer: Option<String>,

    /// Fetch the keys from this URL instead of discovering it. Same URL rules as `issuer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rules::matches(
        r"^(https://[^\s/?#]+|http://(localhost|127\.0\.0\.1|\[::1\])(:[0-9]+)?)(/[^\s#]*)?$",
        "jwksUri must be an https URL (http only on localhost)"))]
    pub jwks_uri: Option<String>,

    /// The keys themselves, for air-gapped clusters: a JWK Set with public keys only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,

    /// Preset: the cluster's own service-account token issuer. Its discovery document and
    /// keys are read through the API server with the operator's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesIssuer>,

    /// Preset: an Azure AD (Entra ID) tenant and the application whose tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureIssuer>,

    /// The `aud` values accepted; a token must carry at least one. Always checked.
    #[schemars(length(min = 1, max = MAX_AUDIENCES), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = rules::all_match(AUDIENCE_PATTERN, "each audience is a URI or name without spaces"))]
    pub audiences: Vec<String>,

    /// Signature algorithms accepted from this issuer (default `RS256` and `ES256`). `none`
    /// and the HMAC algorithms cannot be chosen.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 9))]
    pub algorithms: Vec<JwsAlgorithm>,

    /// Tolerance for `exp`, `nbf` and `iat` (default 60s, at most 5m).
    #[serde(default = "default_clock_skew")]
    #[x_kube(validation = rules::duration_within(None, Some("5m"), "clockSkew must be at most 5m"))]
    pub clock_skew: Duration,

    /// How often keys are fetched again (default 1h, between 1m and 24h). An unknown `kid`
    /// triggers one rate-limited fetch in between.
    #[serde(default = "default_refresh_interval")]
    #[x_kube(validation = rules::duration_within(Some("1m"), Some("24h"), "refreshInterval must be between 1m and 24h"))]
    pub refresh_interval: Duration,

    /// How long the last good keys keep working while the issuer cannot be reached
    /// (default 24h, between 1h and 168h).
    #[serde(default = "default_max_key_age")]
    #[x_kube(validation = rules::duration_within(Some("1h"), Some("168h"), "maxKeyAge must be between 1h and 168h"))]
    pub max_key_age: Duration,
}

fn default_algorithms() -> Vec<JwsAlgorithm> {
    vec![JwsAlgorithm::RS256, JwsAlgorithm::ES256]
}

fn default_clock_skew() -> Duration {
    std::time::Duration::from_secs(60).into()
}

fn default_refresh_interval() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

fn default_max_key_age() -> Duration {
    std::time::Duration::from_secs(24 * 3600).into()
}

/// A JWK Set (RFC 7517 §5) of public keys.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct JwkSet {
    /// The keys.
    #[schemars(length(min = 1, max = 32))]
    pub keys: Vec<Jwk>,
}

/// The cluster's own service-account issuer. No fields yet: the issuer URL and keys are
/// discovered through the API server.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
pub struct KubernetesIssuer {}

/// An Azure AD tenant and the application whose tokens are accepted.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AzureIssuer {
    /// Directory (tenant) id, a GUID. Issuer `https://login.microsoftonline.com/{tenantId}/v2.0`
    /// (and the v1 `https://sts.windows.net/{tenantId}/`) with that tenant's keys.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = rules::matches(GUID_PATTERN, "tenantId must be a GUID"))]
    pub tenant_id: String,
    /// Application (client) id of the calling application, a GUID: the token's `appid` or
    /// `azp` must equal it.
    #[schemars(length(min = 36, max = 36))]
    #[x_kube(validation = rules::matches(GUID_PATTERN, "applicationId must be a GUID"))]
    pub application_id: String,
}

const GUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// What the controller last saw of an issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerStatus {
    /// `Ready` with reason and message (for a failing issuer: what failed, and that the last
    /// good keys are still in use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The resolved `iss` value (from `issuer` or a preset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub issuer: Option<String>,
    /// The resolved JWKS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub jwks_uri: Option<String>,
    /// How many keys are in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_count: Option<i32>,
    /// The `kid`s of the keys in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 256)))]
    pub key_ids: Vec<String>,
    /// When keys were last fetched successfully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetch_time: Option<Time>,
    /// The last fetch error, cleared by a successful fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub last_error: Option<String>,
}
