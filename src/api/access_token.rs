//! `AccessToken`: a token kept in a Secret in the client's own namespace, renewed before it
//! expires — the cert-manager `Certificate` of this operator.
//!
//! It lives beside the ServiceAccount it is for, so whoever may create AccessTokens in that
//! namespace (its owners) asks for files their workloads mount; what the token may carry is
//! decided by the audience owners' TokenGrants, exactly as at the token endpoint. It is also
//! the listed object of a materialized token: `kubectl get s2s -A` shows each with its
//! account, audiences, expiry and revision.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rules;
use super::{
    AUDIENCE_PATTERN, DNS1123_SUBDOMAIN_PATTERN, Duration, MAX_SCOPES, MAX_TOKEN_LIFETIME,
    SCOPE_NAME_PATTERN, TokenGrantStatus,
};

/// Most audiences one AccessToken may name (as one token request).
pub const MAX_TOKEN_AUDIENCES: usize = crate::token::audience::MAX_AUDIENCES;

/// A renewed token for a ServiceAccount of this namespace, kept in a Secret of this namespace.
// Each `printcolumn(...)` repeats `type_ = …`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "s2s.dev",
    version = "v1alpha1",
    kind = "AccessToken",
    namespaced,
    status = "AccessTokenStatus",
    shortname = "s2stoken",
    category = "s2s",
    derive = "PartialEq",
    doc = "A token for a ServiceAccount of this namespace, written into a Secret of this namespace and renewed before it expires; authorized by the audience owners' TokenGrants.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Account",
        type_ = "string",
        json_path = ".spec.serviceAccountName"
    ),
    printcolumn(name = "Audiences", type_ = "string", json_path = ".spec.audiences"),
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
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.renewBefore) || duration(self.renewBefore) < duration(self.lifetime)"
).message("renewBefore must be shorter than lifetime"))]
#[serde(rename_all = "camelCase")]
pub struct AccessTokenSpec {
    /// The ServiceAccount (this API's kind) in this namespace the token is for: its client id
    /// is the token's `sub`. Cannot change: another account is another AccessToken.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::immutable("serviceAccountName"))]
    pub service_account_name: String,

    /// The audiences of the token (more than one: one token for several targets, RFC 8707;
    /// see the README on why one is the safer default). Each must be among the account's
    /// `spec.audiences` and granted to it by a TokenGrant in the audience owner's namespace.
    #[schemars(length(min = 1, max = MAX_TOKEN_AUDIENCES), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = rules::all_match(AUDIENCE_PATTERN, "each audience is a URI or name without spaces"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(a, self.exists_one(b, b == a))").message("audiences must not repeat"))]
    pub audiences: Vec<String>,

    /// The scopes to ask for; each must be allowed at every audience. Empty: every scope all
    /// the audiences allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCOPES), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = rules::all_match(SCOPE_NAME_PATTERN, "each scope is a scope token without spaces, quotes, backslashes or wildcards"))]
    pub scopes: Vec<String>,

    /// Secret in this namespace that receives `access_token`, `token_type`, `expires_at` and
    /// `authorization`. Created and owned by the operator; a Secret of that name it does not
    /// own is never written.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::matches(DNS1123_SUBDOMAIN_PATTERN, "secretName must be a DNS-1123 subdomain"))]
    pub secret_name: String,

    /// Lifetime of each token (default 1h, between 5m and 24h; the operator's
    /// `--max-token-lifetime` caps it).
    #[serde(default = "default_lifetime")]
    #[x_kube(validation = rules::duration_within(Some("5m"), Some(MAX_TOKEN_LIFETIME), "lifetime must be between 5m and 24h"))]
    pub lifetime: Duration,

    /// Renew this long before expiry (default a third of the lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some("1m"), None, "renewBefore must be at least 1m"))]
    pub renew_before: Option<Duration>,
}

fn default_lifetime() -> Duration {
    std::time::Duration::from_secs(3600).into()
}

/// The status of an AccessToken: the same fields as a TokenGrant's `output` (conditions
/// `Ready` and `Issuing`, `tokenId`, `notAfter`, `renewalTime`, `lastIssued`, `revision`).
pub type AccessTokenStatus = TokenGrantStatus;
