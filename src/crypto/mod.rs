//! Everything cryptographic the operator and the token server do, with no Kubernetes in sight.
//!
//! * Client secrets and identifiers ([`random_secret`], [`random_token_id`],
//!   [`new_client_id`]), and the digest published instead of a secret ([`secret_digest`],
//!   checked by [`verify_secret`] in constant time).
//! * Key pairs ([`generate_key`]): the private half as PKCS#8 PEM (and JWK) goes into a Secret;
//!   the public half as a [`Jwk`] whose `kid` is its RFC 7638 [`thumbprint`] goes into a status
//!   or a JWKS.
//! * Signing: a [`SigningKey`] is parsed once from the PEM, then [`sign_jwt`] mints tokens with
//!   it.
//! * Verifying: [`decoding_key`] turns a published [`Jwk`] into a `jsonwebtoken` key pinned to
//!   one algorithm.
//!
//! Data flows one way: the reconcilers generate material and store it; the token server loads
//! PEMs into [`SigningKey`]s and public JWKs into decoding keys. The primitives are aws-lc-rs
//! (randomness, digests, signatures, constant-time comparison) and rcgen (key generation, PEM);
//! nothing here implements one. No function logs or formats key material, and neither `Debug`
//! of [`GeneratedKey`] nor of [`SigningKey`] shows it.

mod error;
mod jwk;
mod keys;
mod secrets;

pub use error::CryptoError;
pub use jwk::{Jwk, JwsAlgorithm, KeyAlgorithm, decoding_key, thumbprint};
pub use keys::{GeneratedKey, SigningKey, generate_key, sign_jwt};
pub use secrets::{new_client_id, random_secret, random_token_id, secret_digest, verify_secret};
