//! `TokenGrant`: who may get a token for which audience, with which scopes.
//!
//! A grant lives in the namespace of the resource owner (the target service, or the tenant
//! whose data is accessed) and may only name an audience that an account in that same
//! namespace claims with `spec.api`. So whoever may create TokenGrants in a namespace decides
//! who may call its APIs, and nobody else does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rules;
use super::{
    AUDIENCE_PATTERN, Condition, DNS1123_SUBDOMAIN_PATTERN, Duration, MAX_SCOPES,
    MAX_TOKEN_LIFETIME, ObjectRef, SCOPE_PATTERN,
};

/// Permission for a subject to get tokens for an audience.
// Each `printcolumn(...)` repeats `type_ = …`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "s2s.dev",
    version = "v1alpha1",
    kind = "TokenGrant",
    namespaced,
    status = "TokenGrantStatus",
    shortname = "tgrant",
    category = "s2s",
    derive = "PartialEq",
    doc = "Permission for a subject (a ServiceAccount, or an external issuer's subject) to get tokens for an audience claimed in this namespace, with these scopes.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Subject",
        type_ = "string",
        json_path = ".spec.subject.serviceAccount.name"
    ),
    printcolumn(name = "Audience", type_ = "string", json_path = ".spec.audience"),
    // A string (RFC 3339), not `date`: kubectl prints a `date` as an age (`<invalid>` when
    // it lies ahead).
    printcolumn(name = "Expires", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Revision", type_ = "integer", json_path = ".status.revision"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TokenGrantSpec {
    /// Who gets tokens. Cannot change: a new subject is a new grant.
    #[x_kube(validation = rules::immutable("subject"))]
    pub subject: GrantSubject,

    /// The audience tokens are for. An account in this namespace must claim it with
    /// `spec.api.audience`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rules::matches(AUDIENCE_PATTERN, "audience is a URI or name without spaces"))]
    pub audience: String,

    /// The scopes granted. A token carries the requested scopes that survive these, the
    /// account's ceiling, and the API's definitions; with none requested, all that survive.
    /// A trailing `*` covers a subtree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCOPES), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = rules::all_match(SCOPE_PATTERN, "each scope is a scope token (no spaces, quotes or backslashes) with `*` only at its end"))]
    pub scopes: Vec<String>,

    /// The tenant this grant stands for: tokens issued under it carry it in the `tenant`
    /// claim, and the subject can list the tenants that granted it access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::matches(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", "tenant is letters, digits, '-', '_' and '.', starting and ending with a letter or digit"))]
    pub tenant: Option<String>,

    /// Lets the subject exchange another party's token (RFC 8693) for one on that party's
    /// behalf; such tokens keep the original `sub` and carry the subject in `act`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation: Option<Delegation>,

    /// Mint a token for the subject into a Secret in this namespace and renew it before it
    /// expires, for consumers that can only read a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<TokenOutput>,

    /// Revoke every token issued under this grant and issue no more.
    #[serde(default)]
    pub revoked: bool,
}

/// The subject of a grant: one of our ServiceAccounts, or a subject of a TrustedIssuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.serviceAccount) != has(self.issuerRef)")
    .message("set exactly one of serviceAccount or issuerRef"))]
#[x_kube(validation = kube::core::Rule::new("has(self.issuerRef) == has(self.subject)")
    .message("subject goes with issuerRef, and only with it"))]
#[serde(rename_all = "camelCase")]
pub struct GrantSubject {
    /// A ServiceAccount (this API's kind), in the grant's namespace unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ObjectRef>,
    /// A TrustedIssuer whose token's `sub` equals `subject` (JWT-bearer grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<ObjectRef>,
    /// The exact `sub` of the issuer's tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub subject: Option<String>,
}

/// Which tokens the subject may exchange for tokens on their behalf.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Delegation {
    /// TrustedIssuers whose tokens may be exchanged; tokens of this operator always may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub issuers: Vec<ObjectRef>,
    /// `sub` values (with `*` wildcards) of the tokens that may be exchanged; any when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 512)))]
    pub subjects: Vec<String>,
}

/// A token materialized into a Secret and renewed before it expires.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.renewBefore) || duration(self.renewBefore) < duration(self.lifetime)"
).message("renewBefore must be shorter than lifetime"))]
#[serde(rename_all = "camelCase")]
pub struct TokenOutput {
    /// Secret in the grant's namespace that receives `access_token`, `token_type`,
    /// `expires_at` and `authorization`. Created and owned by the operator.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::matches(DNS1123_SUBDOMAIN_PATTERN, "secretName must be a DNS-1123 subdomain"))]
    pub secret_name: String,
    /// Lifetime of each token (default 1h, between 5m and 24h).
    #[serde(default = "default_output_lifetime")]
    #[x_kube(validation = rules::duration_within(Some("5m"), Some(MAX_TOKEN_LIFETIME), "lifetime must be between 5m and 24h"))]
    pub lifetime: Duration,
    /// Renew this long before expiry (default a third of the lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some("1m"), None, "renewBefore must be at least 1m"))]
    pub renew_before: Option<Duration>,
}

fn default_output_lifetime() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

/// What the controller observed and did for a grant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenGrantStatus {
    /// `Ready`, and `Issuing` for a grant with `output`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The `.metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the output token was last issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issued: Option<Time>,
    /// When the output token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the output token will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// The `jti` of the output token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub token_id: Option<String>,
    /// How many output tokens have been issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// The last value of the `s2s.dev/rotate` annotation acted on with a new token (an
    /// AccessToken's renewal on demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub rotation_request: Option<String>,
}
