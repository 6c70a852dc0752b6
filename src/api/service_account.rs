//! `ServiceAccount`: a machine identity and the credentials it authenticates with.
//!
//! The controller turns each authentication method into a Secret in the account's namespace
//! (owned by the account) and publishes only verifiers in `status.credentials`: a digest of a
//! client secret, the public half of a key. The token server reads those verifiers and never
//! needs to read a workload's Secret.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::rules;
use super::{
    AUDIENCE_PATTERN, Condition, DNS1123_SUBDOMAIN_PATTERN, Duration, Jwk, KeyAlgorithm,
    MAX_AUDIENCES, MAX_SCOPES, MAX_TOKEN_LIFETIME, MIN_ROTATION_PERIOD, MIN_TOKEN_LIFETIME,
    ObjectRef, SCOPE_NAME_PATTERN, SCOPE_PATTERN,
};

/// A machine identity: what its tokens may carry, how it authenticates, and the API it exposes.
// Each `printcolumn(...)` repeats `type_ = …`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "s2s.dev",
    version = "v1alpha1",
    kind = "ServiceAccount",
    namespaced,
    status = "ServiceAccountStatus",
    shortname = "s2ssa",
    category = "s2s",
    derive = "PartialEq",
    doc = "A machine identity: the scopes and audiences its tokens may carry, how it authenticates (client secret, private-key JWT, federated), and optionally the API it exposes.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Client ID", type_ = "string", json_path = ".status.clientId"),
    printcolumn(
        name = "Expires",
        // A string (RFC 3339), not `date`: kubectl prints a `date` as an age, and a
        // future time as `<invalid>`.
        type_ = "string",
        json_path = ".status.currentCredential.expires"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("has(self.authentication) || has(self.api)")
    .message("set at least one authentication method, or an api"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountSpec {
    /// What the account is for; free text shown to people, never used for decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// The most a token of this account may carry: a token's scopes are the requested ones
    /// that survive this list and the TokenGrant's. Scopes are colon-separated segments; a
    /// trailing `*` covers a subtree (`fr:idc:esv:*` covers `fr:idc:esv:read`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCOPES), inner(length(min = 1, max = 256)))]
    #[x_kube(validation = rules::all_match(SCOPE_PATTERN, "each scope is a scope token (no spaces, quotes or backslashes) with `*` only at its end"))]
    pub scopes: Vec<String>,

    /// The audiences (target services) the account may ask tokens for. A TokenGrant in the
    /// audience's namespace must also allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_AUDIENCES), inner(length(min = 1, max = 512)))]
    #[x_kube(validation = rules::all_match(AUDIENCE_PATTERN, "each audience is a URI or name without spaces"))]
    pub audiences: Vec<String>,

    /// Lifetime of the access tokens issued to this account (Go duration, 1m to 24h). The
    /// operator-wide maximum may shorten it further.
    #[serde(default = "default_token_lifetime")]
    #[x_kube(validation = rules::duration_within(Some(MIN_TOKEN_LIFETIME), Some(MAX_TOKEN_LIFETIME), "tokenLifetime must be between 1m and 24h"))]
    pub token_lifetime: Duration,

    /// A disabled account keeps its credentials but gets no tokens (`invalid_client`).
    #[serde(default)]
    pub disabled: bool,

    /// The account is also a resource server: it claims an audience and defines the scopes
    /// other accounts may be granted on it. Two accounts may not claim the same audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSpec>,

    /// How the account proves who it is. An account with only `api` registers an API that
    /// lives outside the cluster and gets no credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Authentication>,
}

fn default_token_lifetime() -> Duration {
    Duration(std::time::Duration::from_secs(3600).into())
}

/// The API an account exposes (the "expose an API" model).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// The audience string tokens for this API carry in `aud`, for example
    /// `https://orders.example.com` or `api://orders`. Unique across the cluster.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = rules::matches(AUDIENCE_PATTERN, "audience is a URI or name without spaces"))]
    pub audience: String,

    /// The scopes this API defines; grants for this audience may only name these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_SCOPES))]
    pub scopes: Vec<ApiScope>,
}

/// One scope an API defines.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiScope {
    /// The scope token, for example `orders:read`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = rules::matches(SCOPE_NAME_PATTERN, "scope name is a scope token without spaces, quotes, backslashes or `*`"))]
    pub name: String,
    /// What the scope allows, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

/// The authentication methods of an account; any combination of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.clientSecret) || has(self.privateKeyJwt) || has(self.federated)"
).message("authentication needs at least one of clientSecret, privateKeyJwt, federated"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.clientSecret) || !has(self.privateKeyJwt) || self.clientSecret.secretName != self.privateKeyJwt.secretName"
).message("clientSecret and privateKeyJwt need different secretNames"))]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// A generated client id and 256-bit secret, written to a Secret (`client_secret_basic`,
    /// `client_secret_post`). Only a digest of the secret is kept anywhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<ClientSecretAuth>,

    /// A generated key pair; the private key goes to a Secret, the public key stays in
    /// status (`private_key_jwt`, RFC 7523 §2.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_jwt: Option<PrivateKeyJwtAuth>,

    /// No stored secret: a JWT from a TrustedIssuer that matches one of these entries (for
    /// example the pod's projected Kubernetes token) authenticates as this account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub federated: Option<Vec<FederatedIdentity>>,
}

/// A generated client secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = rules::grace_shorter_than_rotation())]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretAuth {
    /// Name of the Secret, in the account's namespace, that receives `client_id`,
    /// `client_secret`, `token_url`, `issuer` and `credentials.json`. The operator creates it
    /// and owns it; it never writes a Secret of this name that it does not own.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::matches(DNS1123_SUBDOMAIN_PATTERN, "secretName must be a DNS-1123 subdomain"))]
    pub secret_name: String,

    /// Rotate the secret on this schedule (Go duration, at least 1h). Without it the secret
    /// rotates only on demand (annotation `s2s.dev/rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some(MIN_ROTATION_PERIOD), None, "rotateEvery must be at least 1h"))]
    pub rotate_every: Option<Duration>,

    /// How long the previous secret keeps working after a rotation (default 24h, or half of
    /// `rotateEvery` if that is shorter). Must be shorter than `rotateEvery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some("1s"), None, "gracePeriod must be positive"))]
    pub grace_period: Option<Duration>,
}

/// A generated key pair for `private_key_jwt`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = rules::grace_shorter_than_rotation())]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeyJwtAuth {
    /// Name of the Secret, in the account's namespace, that receives `client_id`,
    /// `private_key.pem`, `private_key.jwk`, `key_id`, `token_url`, `issuer` and
    /// `credentials.json`. Same ownership rules as for a client secret.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = rules::matches(DNS1123_SUBDOMAIN_PATTERN, "secretName must be a DNS-1123 subdomain"))]
    pub secret_name: String,

    /// Key algorithm: `ES256` (default), `EdDSA` or `RS256`.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,

    /// Regenerate the key on this schedule (Go duration, at least 1h); otherwise only on
    /// demand (annotation `s2s.dev/rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some(MIN_ROTATION_PERIOD), None, "rotateEvery must be at least 1h"))]
    pub rotate_every: Option<Duration>,

    /// How long the previous key keeps working after a rotation (default 24h, or half of
    /// `rotateEvery` if that is shorter). Must be shorter than `rotateEvery`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration_within(Some("1s"), None, "gracePeriod must be positive"))]
    pub grace_period: Option<Duration>,
}

/// One external identity that authenticates as this account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FederatedIdentity {
    /// The TrustedIssuer whose tokens are accepted (in the account's namespace unless
    /// `namespace` is given).
    pub issuer_ref: ObjectRef,

    /// The `sub` the external token must carry: exact, or with `*` standing for any run of
    /// characters (`system:serviceaccount:team-a:*`). A lone `*` is refused: it would accept
    /// every subject of the issuer.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("self.replace('*', '') != ''")
        .message("subject needs more than wildcards"))]
    pub subject: String,

    /// An audience the external token must carry, on top of the issuer's accepted ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub audience: Option<String>,

    /// Further claims the token must carry with exactly these string values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 16))]
    pub claims: BTreeMap<String, String>,
}

/// What the controller observed and did for an account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(oldSelf.clientId) || (has(self.clientId) && self.clientId == oldSelf.clientId)"
).message("clientId is immutable once set"))]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountStatus {
    /// `Ready`, `CredentialsIssued`, with reason and message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `.metadata.generation` the status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The account's OAuth 2.0 client id: generated once, never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub client_id: Option<String>,

    /// The newest credential: its id, when it was created, when it is due for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_credential: Option<CredentialSummary>,

    /// Every credential that verifies now: the current one of each method, and a previous
    /// one during its grace period. Holds verifiers only (a digest, a public key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub credentials: Vec<CredentialVerifier>,

    /// The last value of the `s2s.dev/rotate` annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub rotation_request: Option<String>,
}

/// The kind of a credential.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialType {
    /// A client secret.
    ClientSecret,
    /// A private key for `private_key_jwt`.
    PrivateKey,
}

/// A credential as a person checks it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CredentialSummary {
    /// Credential id (for a key, its `kid`).
    #[schemars(length(max = 128))]
    pub id: String,
    /// Which method it belongs to.
    #[serde(rename = "type")]
    pub type_: CredentialType,
    /// When it was created.
    pub created: Time,
    /// When it is due for scheduled rotation; absent when it rotates only on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// What the token server needs to verify one credential, and nothing secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new(
    "self.type == 'ClientSecret' ? has(self.secretDigest) : has(self.publicKey)"
).message("a client secret carries secretDigest, a private key carries publicKey"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialVerifier {
    /// Credential id (for a key, its `kid`).
    #[schemars(length(max = 128))]
    pub id: String,
    /// Which method it belongs to.
    #[serde(rename = "type")]
    pub type_: CredentialType,
    /// When it was created.
    pub created: Time,
    /// When it stops verifying: the end of the grace period of a rotated-out credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// For a client secret: `sha256:` and the base64url SHA-256 digest of the secret. The
    /// secret is 256 bits of randomness, so the digest reveals nothing usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub secret_digest: Option<String>,
    /// For a private key: its public half.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<Jwk>,
}
