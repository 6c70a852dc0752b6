//! # s2s-operator
//!
//! Service-to-service authentication for Kubernetes, declared as YAML.
//!
//! ## The data model
//! * A [`ServiceAccount`](api::ServiceAccount) is a machine identity. Its
//!   `spec.authentication` methods become credentials in Secrets the operator owns (a client
//!   secret, a private key) or point at external identities (`federated`). Only verifiers (a
//!   digest, a public key) are published in its status.
//! * A [`TrustedIssuer`](api::TrustedIssuer) is an identity provider whose JWTs are accepted.
//! * A [`TokenGrant`](api::TokenGrant), in the namespace of the API's owner, lets a subject get
//!   tokens for an audience claimed in that namespace, with some scopes.
//!
//! ## How data flows
//! Resources → pure validation and builders → writes (Secrets, status). Resources and
//! verifiers → a read model → the token-issuing core → HTTP. The pure stages never see a
//! Kubernetes client, so `dev` mode and tests run them without a cluster.
//!
//! ## Modules
//! * [`api`]: the kinds' types and schema rules, nothing else.
//! * [`k8s`]: glue shared by the reconcilers (labels, ownership, conditions, Lease, errors).
//! * [`crypto`]: random secrets, digests, key generation, JWKs, JWT signing; no `kube`.
//! * [`service_account`]: the ServiceAccount reconcile as pure stages (credentials, rotation,
//!   Secret layout, status).
//! * [`token_grant`]: the TokenGrant reconcile as pure stages (audience ownership, subject,
//!   revocation, the output token minted into a Secret and renewed before it expires).
//! * [`signing_keys`]: the lifecycle of the operator's token-signing keys.
//! * [`trusted_issuer`]: TrustedIssuer keys (discovery, fetching, caching, refresh) and the
//!   validation of external JWTs against them.
//! * [`revocation`]: the deny list ([`token::deny`]) kept in a ConfigMap, watched by every
//!   token server.
//! * [`store`]: resources to the token core's read model.
//! * [`token`]: the issuing core (authenticate, authorize, mint, introspect, revoke); no
//!   `kube`.
//! * [`http`]: the token server's endpoints (axum).
//! * [`token_server`]: `s2s-operator token-server`: the core fed by watches, over HTTP(S).
//! * [`controller`]: `s2s-operator controller`: leader election, the ServiceAccount,
//!   TrustedIssuer and TokenGrant controllers and the signing-key manager against the
//!   Kubernetes API.
//! * [`dev`]: `s2s-operator dev`, everything in one process from manifest files.
//! * [`agent`]: `s2s-operator agent`, the workload sidecar: mounted credentials to cached,
//!   refreshed access tokens on loopback and in files.
//! * [`cli`]: `kubectl s2s` (the `kubectl-s2s` binary): status, rotate, token, revoke, inspect
//!   and check, through the Kubernetes API and the token server's service proxy.
#![forbid(unsafe_code)]

pub mod access_token;
pub mod agent;
pub mod api;
pub mod cli;
pub mod controller;
pub mod crypto;
pub mod dev;
pub mod http;
pub mod inject;
pub mod k8s;
pub mod revocation;
pub mod service_account;
pub mod signing_keys;
pub mod store;
pub mod tls;
pub mod token;
pub mod token_grant;
pub mod token_server;
pub mod trusted_issuer;
