//! The token-issuing core. It knows nothing about where accounts come from: it reads a
//! [`Registry`] (clients, APIs, grants) and a [`KeySet`], authenticates clients, authorizes
//! requests (requested ∩ account ceiling ∩ grants; no grant, no token) and issues RFC 9068
//! JWTs. The same core serves `dev`, `token-server` and the tests. Nothing here imports `kube`.

pub mod audience;
pub mod core;
pub mod deny;
pub mod error;
pub mod exchange;
pub mod registry;
pub mod request;
pub mod scopes;
pub mod tenants;

pub use self::core::{
    AccessClaims, Authorization, Clock, Config, Core, KeySet, SystemClock, TokenResponse,
    authorize_client,
};
pub use audience::Audience;
pub use error::{ErrorCode, OAuthError};
pub use registry::{Api, Client, ClientKey, Grant, Registry, SecretVerifier};
pub use request::{ClientAuth, Params};
