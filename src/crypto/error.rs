//! What can go wrong in [`crate::crypto`]. No message ever carries key material: variants hold
//! the algorithm, the name of a JWK member, or a fixed reason, never a key's bytes or PEM.

use super::KeyAlgorithm;

/// An error from key generation, key parsing, JWK handling or signing.
#[derive(thiserror::Error, Debug)]
pub enum CryptoError {
    /// The key generator failed (in practice: the system random generator).
    #[error("cannot generate a {0:?} key")]
    KeyGeneration(KeyAlgorithm),
    /// A private key is not an unencrypted PKCS#8 key of the expected algorithm.
    #[error("the private key is not a valid PKCS#8 {alg:?} key: {reason}")]
    InvalidPrivateKey {
        /// The algorithm the key was expected to be for.
        alg: KeyAlgorithm,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A JWK has a key type this crate does not verify with (`oct`, or anything unknown).
    #[error("unsupported JWK key type {0:?} (expected EC, OKP or RSA)")]
    UnsupportedKeyType(String),
    /// A JWK's curve does not belong to a supported algorithm.
    #[error("unsupported curve {crv:?} for a JWK of type {kty}")]
    UnsupportedCurve {
        /// The key type (`EC` or `OKP`).
        kty: &'static str,
        /// The curve found (empty when absent).
        crv: String,
    },
    /// A JWK lacks a member its key type requires.
    #[error("the JWK has no `{0}` member")]
    MissingMember(&'static str),
    /// A JWK member is present but unusable.
    #[error("the JWK member `{member}` is malformed: {reason}")]
    MalformedMember {
        /// The member (`x`, `y`, `n`, `e`).
        member: &'static str,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A JWK's members decode, but do not form a valid public key.
    #[error("the JWK is not a valid public key: {0}")]
    InvalidPublicKey(&'static str),
    /// A JWK's `alg` disagrees with its key type and curve.
    #[error("the JWK says alg {found:?}, but its key is for {expected}")]
    AlgorithmMismatch {
        /// The algorithm the key material implies.
        expected: &'static str,
        /// The `alg` member found.
        found: String,
    },
    /// A JWK whose `use` is not `sig` must not verify signatures.
    #[error("the JWK is for use {0:?}, not `sig`")]
    NotForSigning(String),
    /// The signing primitive failed.
    #[error("signing with a {0:?} key failed")]
    Signing(KeyAlgorithm),
    /// A JWT header or claims set, or a JWK, could not be serialized to JSON.
    #[error("cannot serialize the {what} to JSON")]
    Serialize {
        /// What was being serialized (`JWT header`, `JWT claims`, `JWK`).
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}
