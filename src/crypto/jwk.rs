//! The public-key types the API shares with the crypto code (a JSON Web Key, the algorithms the
//! operator generates keys for) and what is computed from a public JWK: its RFC 7638 thumbprint
//! and a verifying key.
//!
//! The types live here so that `crypto` depends on nothing in `api`; `api` re-exports them, so
//! their schema (and the CRDs) read as before.

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{self, ParsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CryptoError;

/// A public key as a JSON Web Key (RFC 7517): what the schema lets a status or an inline key
/// set carry. Private members (`d`, `p`, `q`, …) have no field here, so they are never kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Jwk {
    /// Key type: `EC`, `OKP` or `RSA`.
    #[schemars(length(min = 1, max = 8))]
    pub kty: String,
    /// Key id, matched against a JWT's `kid` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub kid: Option<String>,
    /// Algorithm the key is meant for (`ES256`, `EdDSA`, `RS256`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub alg: Option<String>,
    /// Intended use; `sig` for every key here.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "use")]
    #[schemars(length(max = 8))]
    pub use_: Option<String>,
    /// Curve of an `EC` or `OKP` key (`P-256`, `P-384`, `Ed25519`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub crv: Option<String>,
    /// Public x coordinate (EC) or public key (OKP), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub x: Option<String>,
    /// Public y coordinate of an `EC` key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub y: Option<String>,
    /// Modulus of an `RSA` key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub n: Option<String>,
    /// Public exponent of an `RSA` key, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub e: Option<String>,
}

/// Asymmetric JWS algorithms (RFC 7518, RFC 8037) an issuer may sign with.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwsAlgorithm {
    /// RSA PKCS#1 v1.5, SHA-256.
    RS256,
    /// RSA PKCS#1 v1.5, SHA-384.
    RS384,
    /// RSA PKCS#1 v1.5, SHA-512.
    RS512,
    /// RSA-PSS, SHA-256.
    PS256,
    /// RSA-PSS, SHA-384.
    PS384,
    /// RSA-PSS, SHA-512.
    PS512,
    /// ECDSA P-256, SHA-256.
    ES256,
    /// ECDSA P-384, SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// Algorithms the operator generates keys for: workload private keys and its own signing keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: small, fast, the default.
    #[default]
    ES256,
    /// Ed25519: the fastest to sign and verify.
    EdDSA,
    /// RSA PKCS#1 v1.5 with SHA-256, 2048-bit keys: for peers that know nothing else.
    RS256,
}

/// The RFC 7638 thumbprint of a public JWK: base64url (no padding) of the SHA-256 of its
/// required members (`crv`, `kty`, `x`, `y` for `EC`; `crv`, `kty`, `x` for `OKP`; `e`, `kty`,
/// `n` for `RSA`) as JSON, in lexicographic order, without whitespace.
///
/// Optional members (`kid`, `alg`, `use`) do not change it; it is what [`generate_key`]
/// uses as the `kid`.
///
/// [`generate_key`]: super::generate_key
pub fn thumbprint(jwk: &Jwk) -> Result<String, CryptoError> {
    let canonical = match jwk.kty.as_str() {
        "EC" => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            json_string(required(jwk.crv.as_deref(), "crv")?)?,
            json_string(required(jwk.x.as_deref(), "x")?)?,
            json_string(required(jwk.y.as_deref(), "y")?)?,
        ),
        "OKP" => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            json_string(required(jwk.crv.as_deref(), "crv")?)?,
            json_string(required(jwk.x.as_deref(), "x")?)?,
        ),
        "RSA" => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            json_string(required(jwk.e.as_deref(), "e")?)?,
            json_string(required(jwk.n.as_deref(), "n")?)?,
        ),
        other => return Err(CryptoError::UnsupportedKeyType(other.to_owned())),
    };
    Ok(URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes())))
}

/// A key that verifies JWTs signed by the private half of a public JWK, and the one algorithm it
/// may verify.
///
/// Accepted: `EC` on `P-256` (`ES256`) or `P-384` (`ES384`), `OKP` on `Ed25519` (`EdDSA`),
/// `RSA` with a 2048- to 8192-bit modulus (`RS256`). Refused: any other key type (notably
/// `oct`: a shared secret never verifies a token here), curve or size; an `alg` that disagrees
/// with the key; a `use` other than `sig`; members that are not base64url or do not form a
/// valid public key. Callers should pin the returned algorithm in their `Validation`, never take
/// it from a token's header.
///
/// `ES384` is here although the operator never generates P-384 keys: a TrustedIssuer may allow
/// it, and an allowed algorithm whose keys were skipped would fail every token silently.
pub fn decoding_key(jwk: &Jwk) -> Result<(DecodingKey, Algorithm), CryptoError> {
    if let Some(use_) = jwk.use_.as_deref().filter(|u| *u != "sig") {
        return Err(CryptoError::NotForSigning(use_.to_owned()));
    }
    let (alg, name) = match jwk.kty.as_str() {
        "EC" => match jwk.crv.as_deref() {
            Some("P-256") => (Algorithm::ES256, "ES256"),
            Some("P-384") => (Algorithm::ES384, "ES384"),
            other => {
                return Err(CryptoError::UnsupportedCurve {
                    kty: "EC",
                    crv: other.unwrap_or_default().to_owned(),
                });
            }
        },
        "OKP" => {
            expect_curve(jwk, "OKP", "Ed25519")?;
            (Algorithm::EdDSA, "EdDSA")
        }
        "RSA" => (Algorithm::RS256, "RS256"),
        other => return Err(CryptoError::UnsupportedKeyType(other.to_owned())),
    };
    if let Some(found) = jwk.alg.as_deref().filter(|a| *a != name) {
        return Err(CryptoError::AlgorithmMismatch {
            expected: name,
            found: found.to_owned(),
        });
    }
    let key = match alg {
        Algorithm::ES256 => ec_key::<32>(
            jwk,
            &signature::ECDSA_P256_SHA256_FIXED,
            "(x, y) is not a point on P-256",
        )?,
        Algorithm::ES384 => ec_key::<48>(
            jwk,
            &signature::ECDSA_P384_SHA384_FIXED,
            "(x, y) is not a point on P-384",
        )?,
        Algorithm::EdDSA => {
            let x = required(jwk.x.as_deref(), "x")?;
            ParsedPublicKey::new(&signature::ED25519, decode_exact::<32>(x, "x")?)
                .map_err(|_| CryptoError::InvalidPublicKey("x is not an Ed25519 public key"))?;
            DecodingKey::from_ed_components(x)
        }
        _ => {
            let (n, e) = (
                required(jwk.n.as_deref(), "n")?,
                required(jwk.e.as_deref(), "e")?,
            );
            let modulus = decode_member(n, "n")?;
            let bits = bit_length(&modulus);
            if !(2048..=8192).contains(&bits) {
                return Err(CryptoError::MalformedMember {
                    member: "n",
                    reason: "the modulus must have 2048 to 8192 bits",
                });
            }
            let exponent = decode_member(e, "e")?;
            if !(1..=64).contains(&bit_length(&exponent)) {
                return Err(CryptoError::MalformedMember {
                    member: "e",
                    reason: "the exponent must be a positive integer of at most 64 bits",
                });
            }
            DecodingKey::from_rsa_components(n, e)
        }
    };
    // The members were decoded above, so this cannot fail in practice.
    let key = key.map_err(|_| CryptoError::InvalidPublicKey("rejected by the JWT library"))?;
    Ok((key, alg))
}

/// The verifying key of an `EC` JWK whose coordinates have `N` bytes, after aws-lc-rs has
/// checked that (x, y) is a point of `verifier`'s curve: `jsonwebtoken` would take any bytes.
fn ec_key<const N: usize>(
    jwk: &Jwk,
    verifier: &'static signature::EcdsaVerificationAlgorithm,
    not_on_curve: &'static str,
) -> Result<jsonwebtoken::errors::Result<DecodingKey>, CryptoError> {
    let (x, y) = (
        required(jwk.x.as_deref(), "x")?,
        required(jwk.y.as_deref(), "y")?,
    );
    let mut point = Vec::with_capacity(1 + 2 * N);
    point.push(0x04); // uncompressed SEC1 point
    point.extend_from_slice(&decode_exact::<N>(x, "x")?);
    point.extend_from_slice(&decode_exact::<N>(y, "y")?);
    ParsedPublicKey::new(verifier, &point)
        .map_err(|_| CryptoError::InvalidPublicKey(not_on_curve))?;
    Ok(DecodingKey::from_ec_components(x, y))
}

/// Refuses an `OKP` or `EC` key whose curve is not `crv`.
fn expect_curve(jwk: &Jwk, kty: &'static str, crv: &str) -> Result<(), CryptoError> {
    match jwk.crv.as_deref() {
        Some(c) if c == crv => Ok(()),
        other => Err(CryptoError::UnsupportedCurve {
            kty,
            crv: other.unwrap_or_default().to_owned(),
        }),
    }
}

/// A member the key type requires.
fn required<'a>(member: Option<&'a str>, name: &'static str) -> Result<&'a str, CryptoError> {
    member.ok_or(CryptoError::MissingMember(name))
}

/// A string as a JSON string literal (quoted and escaped).
fn json_string(value: &str) -> Result<String, CryptoError> {
    serde_json::to_string(value).map_err(|source| CryptoError::Serialize {
        what: "JWK",
        source,
    })
}

/// A base64url (no padding) member's bytes.
fn decode_member(value: &str, member: &'static str) -> Result<Vec<u8>, CryptoError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| CryptoError::MalformedMember {
            member,
            reason: "not base64url without padding",
        })
}

/// A base64url (no padding) member that must decode to exactly `N` bytes.
fn decode_exact<const N: usize>(value: &str, member: &'static str) -> Result<[u8; N], CryptoError> {
    decode_member(value, member)?
        .try_into()
        .map_err(|_| CryptoError::MalformedMember {
            member,
            reason: "wrong length for the key's curve",
        })
}

/// The number of significant bits of a big-endian unsigned integer.
fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RSA key of RFC 7638 §3.1.
    fn rfc7638_key() -> Jwk {
        Jwk {
            kty: "RSA".into(),
            n: Some(
                "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6t\
                 Soc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-\
                 65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08q\
                 NLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8aw\
                 apJzKnqDKgw"
                    .into(),
            ),
            e: Some("AQAB".into()),
            alg: Some("RS256".into()),
            kid: Some("2011-04-29".into()),
            ..Jwk::default()
        }
    }

    #[test]
    fn thumbprint_matches_rfc7638_example() {
        assert_eq!(
            thumbprint(&rfc7638_key()).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_ignores_optional_members_and_needs_required_ones() {
        let mut bare = rfc7638_key();
        bare.kid = None;
        bare.alg = None;
        bare.use_ = Some("sig".into());
        assert_eq!(
            thumbprint(&bare).unwrap(),
            thumbprint(&rfc7638_key()).unwrap()
        );

        bare.e = None;
        assert!(matches!(
            thumbprint(&bare),
            Err(CryptoError::MissingMember("e"))
        ));
        let ec = Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some("AA".into()),
            ..Jwk::default()
        };
        assert!(matches!(
            thumbprint(&ec),
            Err(CryptoError::MissingMember("y"))
        ));
        let oct = Jwk {
            kty: "oct".into(),
            ..Jwk::default()
        };
        assert!(matches!(
            thumbprint(&oct),
            Err(CryptoError::UnsupportedKeyType(_))
        ));
    }

    #[test]
    fn decoding_key_accepts_the_rfc_rsa_key() {
        let (_, alg) = decoding_key(&rfc7638_key()).unwrap();
        assert_eq!(alg, Algorithm::RS256);
    }

    #[test]
    fn decoding_key_refuses_what_it_must() {
        let rsa = rfc7638_key();
        let oct = Jwk {
            kty: "oct".into(),
            alg: Some("HS256".into()),
            ..Jwk::default()
        };
        assert!(matches!(
            decoding_key(&oct),
            Err(CryptoError::UnsupportedKeyType(k)) if k == "oct"
        ));

        let mut wrong_alg = rsa.clone();
        wrong_alg.alg = Some("ES256".into());
        assert!(matches!(
            decoding_key(&wrong_alg),
            Err(CryptoError::AlgorithmMismatch {
                expected: "RS256",
                ..
            })
        ));
        wrong_alg.alg = Some("PS256".into());
        assert!(decoding_key(&wrong_alg).is_err());

        let mut enc = rsa.clone();
        enc.use_ = Some("enc".into());
        assert!(matches!(
            decoding_key(&enc),
            Err(CryptoError::NotForSigning(_))
        ));

        let mut short = rsa.clone();
        short.n = Some(URL_SAFE_NO_PAD.encode([0xffu8; 128])); // 1024 bits
        assert!(matches!(
            decoding_key(&short),
            Err(CryptoError::MalformedMember { member: "n", .. })
        ));

        let mut no_e = rsa.clone();
        no_e.e = None;
        assert!(matches!(
            decoding_key(&no_e),
            Err(CryptoError::MissingMember("e"))
        ));

        let mut padded = rsa;
        padded.e = Some("AQAB=".into());
        assert!(matches!(
            decoding_key(&padded),
            Err(CryptoError::MalformedMember { member: "e", .. })
        ));

        let p521 = Jwk {
            kty: "EC".into(),
            crv: Some("P-521".into()),
            x: Some("AA".into()),
            y: Some("AA".into()),
            ..Jwk::default()
        };
        assert!(matches!(
            decoding_key(&p521),
            Err(CryptoError::UnsupportedCurve { kty: "EC", .. })
        ));
        // P-384 coordinates are 48 bytes, P-256 ones are refused on that curve.
        let p384_short = Jwk {
            crv: Some("P-384".into()),
            x: Some(URL_SAFE_NO_PAD.encode([1u8; 32])),
            y: Some(URL_SAFE_NO_PAD.encode([1u8; 32])),
            ..p521
        };
        assert!(matches!(
            decoding_key(&p384_short),
            Err(CryptoError::MalformedMember { member: "x", .. })
        ));
        let p384_off_curve = Jwk {
            x: Some(URL_SAFE_NO_PAD.encode([1u8; 48])),
            y: Some(URL_SAFE_NO_PAD.encode([1u8; 48])),
            ..p384_short
        };
        assert!(matches!(
            decoding_key(&p384_off_curve),
            Err(CryptoError::InvalidPublicKey(_))
        ));

        let not_on_curve = Jwk {
            kty: "EC".into(),
            crv: Some("P-256".into()),
            x: Some(URL_SAFE_NO_PAD.encode([1u8; 32])),
            y: Some(URL_SAFE_NO_PAD.encode([1u8; 32])),
            ..Jwk::default()
        };
        assert!(matches!(
            decoding_key(&not_on_curve),
            Err(CryptoError::InvalidPublicKey(_))
        ));

        let short_ed = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(URL_SAFE_NO_PAD.encode([1u8; 31])),
            ..Jwk::default()
        };
        assert!(matches!(
            decoding_key(&short_ed),
            Err(CryptoError::MalformedMember { member: "x", .. })
        ));

        let x25519 = Jwk {
            crv: Some("X25519".into()),
            ..short_ed
        };
        assert!(matches!(
            decoding_key(&x25519),
            Err(CryptoError::UnsupportedCurve { kty: "OKP", .. })
        ));
    }

    /// A P-384 key pair from aws-lc-rs and its public JWK (`alg` as given).
    fn p384_key(alg: Option<&str>) -> (signature::EcdsaKeyPair, Jwk) {
        use aws_lc_rs::signature::KeyPair as _;
        let pair =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let (x, y) = point[1..].split_at(48);
        let jwk = Jwk {
            kty: "EC".into(),
            crv: Some("P-384".into()),
            x: Some(URL_SAFE_NO_PAD.encode(x)),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            alg: alg.map(str::to_owned),
            ..Jwk::default()
        };
        (pair, jwk)
    }

    #[test]
    fn decoding_key_verifies_es384_with_a_p384_key() {
        use jsonwebtoken::{Validation, decode};
        let (pair, jwk) = p384_key(Some("ES384"));
        let (key, alg) = decoding_key(&jwk).unwrap();
        assert_eq!(alg, Algorithm::ES384);

        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES384","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"workload","exp":99999999999}"#)
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = pair.sign(&rng, input.as_bytes()).unwrap();
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        let mut validation = Validation::new(Algorithm::ES384);
        validation.required_spec_claims.clear();
        let claims = decode::<serde_json::Value>(&jwt, &key, &validation).unwrap();
        assert_eq!(claims.claims["sub"], "workload");

        // The key says what it is for: a P-384 key is never an ES256 key.
        let (_, mislabelled) = p384_key(Some("ES256"));
        assert!(matches!(
            decoding_key(&mislabelled),
            Err(CryptoError::AlgorithmMismatch {
                expected: "ES384",
                ..
            })
        ));
        let (_, bare) = p384_key(None);
        assert_eq!(decoding_key(&bare).unwrap().1, Algorithm::ES384);
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[1, 0, 1]), 17);
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
    }
}
