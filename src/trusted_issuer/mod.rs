//! TrustedIssuers: identity providers whose JWTs the token server accepts.
//!
//! * [`verify`]: validation of an external JWT against an immutable [`verify::Issuers`]
//!   snapshot (no `kube`; the token core uses it).
pub mod cache;
pub mod controller;
pub mod fetch;
pub mod resolve;
pub mod verify;
