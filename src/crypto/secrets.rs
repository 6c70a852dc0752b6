//! Random identifiers and client secrets, and the digests the operator publishes instead of them.
//!
//! A client secret lives only in the Secret the operator owns; the status and the token
//! server's read model carry `sha256:<base64url>` of it, so a reader of the status learns
//! nothing usable. Secrets are 256 random bits, so a plain (unsalted, fast) hash is enough: there
//! is no dictionary to attack.

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest::{self, SHA256, SHA256_OUTPUT_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The prefix of every digest [`secret_digest`] writes; it names the hash so that another one
/// can be introduced later without guessing.
const DIGEST_PREFIX: &str = "sha256:";

/// `N` bytes from the operating system's random generator.
///
/// # Panics
/// If the system generator fails, which AWS-LC treats as fatal anyway: there is no safe way to
/// go on issuing credentials without randomness.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random generator failed");
    bytes
}

/// A new client secret: 32 random bytes (256 bits), base64url without padding (43 characters).
///
/// # Panics
/// Only if the system random generator fails.
pub fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// A new random identifier for a token (`jti`) or a credential: 16 random bytes (128 bits),
/// base64url without padding (22 characters).
///
/// # Panics
/// Only if the system random generator fails.
pub fn random_token_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// A new OAuth `client_id`: a random UUID (version 4, RFC 9562 variant), lowercase hex with
/// dashes (`8-4-4-4-12`).
///
/// # Panics
/// Only if the system random generator fails.
pub fn new_client_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10xx
    let mut id = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// The verifier published for a client secret: `sha256:` followed by the base64url (no padding)
/// SHA-256 of the secret's bytes.
pub fn secret_digest(secret: &str) -> String {
    let hash = digest::digest(&SHA256, secret.as_bytes());
    let mut out = String::with_capacity(DIGEST_PREFIX.len() + 43);
    out.push_str(DIGEST_PREFIX);
    URL_SAFE_NO_PAD.encode_string(hash.as_ref(), &mut out);
    out
}

/// Whether `presented` is the secret whose [`secret_digest`] is `digest`, compared in constant
/// time.
///
/// A malformed digest or an unknown prefix gives `false`, never an error: to a client, a broken
/// verifier and a wrong secret must look the same. The presented secret is hashed before the
/// digest is even looked at, so the time taken does not depend on whether it is well formed.
pub fn verify_secret(presented: &str, digest: &str) -> bool {
    let actual = digest::digest(&SHA256, presented.as_bytes());
    let Some(encoded) = digest.strip_prefix(DIGEST_PREFIX) else {
        return false;
    };
    let mut expected = [0u8; SHA256_OUTPUT_LEN];
    match URL_SAFE_NO_PAD.decode_slice(encoded, &mut expected) {
        Ok(SHA256_OUTPUT_LEN) => verify_slices_are_equal(actual.as_ref(), &expected).is_ok(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn is_base64url(s: &str) -> bool {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    }

    #[test]
    fn digest_verifies_the_right_secret_only() {
        let secret = random_secret();
        let digest = secret_digest(&secret);
        assert!(digest.starts_with("sha256:"));
        assert_eq!(digest.len(), "sha256:".len() + 43);
        assert!(verify_secret(&secret, &digest));
        assert!(!verify_secret(&random_secret(), &digest));
        assert!(!verify_secret("", &digest));
        let mut almost = secret.clone();
        almost.pop();
        assert!(!verify_secret(&almost, &digest));
    }

    #[test]
    fn digest_matches_a_known_sha256() {
        // SHA-256 of the empty string, e3b0c442…b855, in base64url.
        assert_eq!(
            secret_digest(""),
            "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
        assert!(verify_secret(
            "",
            "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        ));
    }

    #[test]
    fn malformed_digests_never_verify() {
        let secret = "s3cret";
        let good = secret_digest(secret);
        let encoded = good.strip_prefix("sha256:").unwrap();
        for bad in [
            String::new(),
            "sha256:".to_owned(),
            encoded.to_owned(),                                     // no prefix
            format!("sha512:{encoded}"),                            // unknown prefix
            format!("SHA256:{encoded}"),                            // prefixes are exact
            format!("sha256:{}", &encoded[..42]),                   // too short
            format!("sha256:{encoded}A"),                           // too long
            format!("sha256:{encoded}="),                           // padding
            format!("sha256:{}", encoded.replace(['-', '_'], "+")), // wrong alphabet
            "sha256:not base64 at all".to_owned(),
            format!("sha256:{}", URL_SAFE_NO_PAD.encode([0u8; 32])), // wrong value
        ] {
            assert!(!verify_secret(secret, &bad), "{bad:?} verified");
        }
    }

    #[test]
    fn random_values_have_the_documented_shape_and_differ() {
        let secrets: HashSet<_> = (0..64).map(|_| random_secret()).collect();
        assert_eq!(secrets.len(), 64);
        assert!(secrets.iter().all(|s| s.len() == 43 && is_base64url(s)));

        let ids: HashSet<_> = (0..64).map(|_| random_token_id()).collect();
        assert_eq!(ids.len(), 64);
        assert!(ids.iter().all(|s| s.len() == 22 && is_base64url(s)));
    }

    #[test]
    fn client_ids_are_uuid_v4() {
        let ids: HashSet<_> = (0..64).map(|_| new_client_id()).collect();
        assert_eq!(ids.len(), 64);
        for id in &ids {
            assert_eq!(id.len(), 36, "{id}");
            for (i, c) in id.char_indices() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    assert_eq!(c, '-', "{id}");
                } else {
                    assert!(matches!(c, '0'..='9' | 'a'..='f'), "{id}");
                }
            }
            assert_eq!(&id[14..15], "4", "version nibble of {id}");
            assert!(
                matches!(&id[19..20], "8" | "9" | "a" | "b"),
                "variant of {id}"
            );
        }
    }
}
