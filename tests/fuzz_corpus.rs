//! The fuzz targets on stable, as ordinary tests: every seed of `fuzz/corpus/<target>/`, then a
//! few thousand mutations of the seeds per target, made deterministically by a seeded xorshift
//! (byte flips, inserts, deletions, splices, and for JWTs claims changed and signed again with
//! the fixture keys, so the checks after the signature are reached too). The bodies are the
//! ones the libFuzzer binaries run (`fuzz/targets/mod.rs`); a panic fails the test and prints
//! the input that caused it.
//!
//! `S2S_FUZZ_MUTATIONS` sets the number of mutations per target (default 5000).
//! `cargo test --test fuzz_corpus -- --ignored write_seeds` rewrites the generated seeds.

#[path = "../fuzz/targets/mod.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use s2s_operator::crypto::{self, KeyAlgorithm};
use s2s_operator::token::{ClientAuth, Params};
use serde_json::{Value, json};
use targets::*;

/// Largest seed file: libFuzzer starts faster from small seeds.
const MAX_SEED: usize = 4096;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// xorshift64: reproducible, not random in any stronger sense.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Bytes that mean something to one of the parsers.
const INTERESTING: &[&[u8]] = &[
    b".",
    b"=",
    b"&",
    b"%",
    b"%2",
    b"%00",
    b"+",
    b":",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"\n",
    b"\r\n",
    b"---\n",
    b"*",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"\xff",
    b"\xc3\x28",
    b"-1",
    b"1e309",
    b"18446744073709551616",
    b"null",
    b"eyJ",
    b"Basic ",
    b"Bearer ",
    b"==",
    b"\\u0000",
];

/// One byte-level mutation (or a few) of `input`, splicing from `others` sometimes.
fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                v.drain(i..i + n);
            }
            4 => {
                let i = rng.below(len + 1);
                let what = rng.pick(INTERESTING);
                v.splice(i..i, what.iter().copied());
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = v[i..i + n].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                let other = rng.pick(others);
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - i).min(512));
                    let at = rng.below(len + 1);
                    v.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            7 if len > 0 => v.truncate(rng.below(len)),
            _ => {
                // Repeat a short run many times: deep nesting, long values.
                if len > 0 {
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(4));
                    let chunk = v[i..i + n].to_vec();
                    for _ in 0..rng.below(200) {
                        v.splice(i..i, chunk.iter().copied());
                    }
                }
            }
        }
    }
    v.truncate(64 * 1024);
    v
}

/// Claims worth changing, and values to put in them.
const CLAIMS: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "act",
    "may_act",
    "client_id",
    "scope",
    "tenant",
    "azp",
    "appid",
];

fn odd_value(rng: &mut Rng, claims: &Value) -> Value {
    let same = claims.as_object().and_then(|o| {
        let values: Vec<&Value> = o.values().collect();
        (!values.is_empty()).then(|| (*rng.pick(&values)).clone())
    });
    match rng.below(16) {
        0 => Value::Null,
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(1.0e300),
        4 => json!(-0.5),
        5 => json!(true),
        6 => json!(""),
        7 => json!([]),
        8 => json!({}),
        9 => json!([ISSUER, IDP, API, 7]),
        10 => json!({"sub": SECRET_CLIENT, "act": {"sub": "x"}}),
        11 => json!(NOW),
        12 => json!(NOW + 30),
        13 => json!("svc:*"),
        14 => json!("x".repeat(rng.below(9000))),
        _ => same.unwrap_or(Value::Null),
    }
}

/// A JWT-aware mutation: the claims of a seed JWT changed and signed again with one of the
/// fixture keys, so the claim checks after the signature run on odd values.
fn resign(rng: &mut Rng, jwt: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(jwt).ok()?;
    let payload = text.split('.').nth(1)?;
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    for _ in 0..1 + rng.below(3) {
        let name = *rng.pick(CLAIMS);
        let value = odd_value(rng, &claims);
        let obj = claims.as_object_mut()?;
        if rng.below(4) == 0 {
            obj.remove(name);
        } else {
            obj.insert(name.to_owned(), value);
        }
    }
    let (alg, kid, pem) = *rng.pick(&[
        (KeyAlgorithm::ES256, "signer", SIGNER_PEM),
        (KeyAlgorithm::ES256, "client-es", CLIENT_PEM),
        (KeyAlgorithm::EdDSA, "client-ed", CLIENT_ED_PEM),
        (KeyAlgorithm::ES256, "idp", IDP_PEM),
    ]);
    let typ = *rng.pick(&["JWT", "at+jwt", ""]);
    crypto::sign_jwt(&signing_key(alg, kid, pem), typ, &claims)
        .ok()
        .map(String::into_bytes)
}

fn run_one(target: &str, body: fn(&[u8]), what: &str, input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(input))).is_err() {
        panic!(
            "target {target} panicked on {what}; input (base64): {}",
            STANDARD.encode(input)
        );
    }
}

fn mutations() -> usize {
    std::env::var("S2S_FUZZ_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5000)
}

fn run_target(target: &str) {
    let body = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .expect("a known target");
    let seeds = seeds(target);
    assert!(
        seeds.len() >= 3,
        "{target}: a handful of seeds in {}",
        corpus_dir(target).display()
    );
    for (name, data) in &seeds {
        assert!(data.len() <= MAX_SEED, "{target}/{name} is over 4 KiB");
        run_one(target, body, &format!("seed {name}"), data);
    }
    let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, d)| d).collect();
    // A fixed seed per target: the same mutations on every run and machine.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (target.len() as u64 * 0x0100_0000_01B3));
    for i in 0..mutations() {
        let base = rng.pick(&inputs).clone();
        let mutated = if target == "jwt" && rng.below(3) == 0 {
            resign(&mut rng, &base).unwrap_or_else(|| mutate(&mut rng, &base, &inputs))
        } else {
            mutate(&mut rng, &base, &inputs)
        };
        run_one(target, body, &format!("mutation {i}"), &mutated);
    }
}

#[test]
fn token_request_corpus() {
    run_target("token_request");
}

#[test]
fn jwt_corpus() {
    run_target("jwt");
}

#[test]
fn jwks_corpus() {
    run_target("jwks");
}

#[test]
fn discovery_corpus() {
    run_target("discovery");
}

#[test]
fn manifests_corpus() {
    run_target("manifests");
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for (name, _) in TARGETS {
        assert!(
            root.join(format!("fuzz_targets/{name}.rs")).is_file(),
            "{name}"
        );
        assert!(manifest.contains(&format!("name = \"{name}\"")), "{name}");
        assert!(corpus_dir(name).is_dir(), "{name}");
    }
}

/// The seeds that are valid inputs signed with the fixture keys, as tests: they must get past
/// the signature, or the fuzzer starts from nothing.
#[test]
fn signed_seeds_are_accepted() {
    let core = core();
    let form = |pairs: &[(&str, &str)]| {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        Params::parse(body.as_bytes()).unwrap()
    };
    let cc = form(&[("grant_type", "client_credentials"), ("audience", API)]);
    let jwt = |name: &str| std::fs::read_to_string(corpus_dir("jwt").join(name)).unwrap();
    for (name, client) in [
        ("private_key_jwt_es256", KEY_CLIENT),
        ("private_key_jwt_eddsa", ED_CLIENT),
        ("idp_federated", FED_CLIENT),
    ] {
        let auth = ClientAuth::Assertion {
            client_id: Some(client.to_owned()),
            assertion: jwt(name),
        };
        core.token(&auth, &cc)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
    let basic = ClientAuth::from_request(Some(&basic_header()), &form(&[])).unwrap();
    let exchange = form(&[
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", &jwt("own_access_token")),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("audience", API),
    ]);
    core.token(&basic, &exchange).unwrap();
    let introspected = core
        .introspect(&basic, &form(&[("token", &jwt("own_access_token"))]))
        .unwrap();
    assert_eq!(introspected["active"], true);
}

/// Writes the generated seeds (signed with the fixture keys at [`NOW`]); the hand-written ones
/// are kept as they are.
#[test]
#[ignore = "rewrites fuzz/corpus; run by hand"]
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        assert!(data.len() <= MAX_SEED, "{target}/{name}");
        std::fs::write(dir.join(name), data).unwrap();
    };
    let sign = |alg, kid: &str, pem: &str, typ: &str, claims: Value| {
        crypto::sign_jwt(&signing_key(alg, kid, pem), typ, &claims).unwrap()
    };
    let assertion = |client: &str, jti: &str| {
        json!({"iss": client, "sub": client, "aud": format!("{ISSUER}/oauth2/token"),
               "exp": NOW + 60, "iat": NOW, "jti": jti})
    };
    let es = sign(
        KeyAlgorithm::ES256,
        "client-es",
        CLIENT_PEM,
        "JWT",
        assertion(KEY_CLIENT, "seed-1"),
    );
    let ed = sign(
        KeyAlgorithm::EdDSA,
        "client-ed",
        CLIENT_ED_PEM,
        "JWT",
        assertion(ED_CLIENT, "seed-2"),
    );
    let idp = |sub: &str, extra: Value| {
        let mut c = json!({"iss": IDP, "sub": sub, "aud": [IDP_AUDIENCE, "other"],
                           "exp": NOW + 600, "iat": NOW - 5, "nbf": NOW - 5});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign(KeyAlgorithm::ES256, "idp", IDP_PEM, "JWT", c)
    };
    let own = core()
        .token(
            &ClientAuth::from_request(Some(&basic_header()), &Params::parse(b"").unwrap()).unwrap(),
            &Params::parse(b"grant_type=client_credentials&audience=https%3A%2F%2Fapi.fuzz")
                .unwrap(),
        )
        .unwrap()
        .access_token;
    write("jwt", "private_key_jwt_es256", es.as_bytes());
    write("jwt", "private_key_jwt_eddsa", ed.as_bytes());
    write(
        "jwt",
        "idp_federated",
        idp("svc:sync", json!({})).as_bytes(),
    );
    write(
        "jwt",
        "idp_delegation_may_act",
        idp(
            "user:alice",
            json!({"may_act": {"sub": SECRET_CLIENT}, "act": {"sub": "earlier"}}),
        )
        .as_bytes(),
    );
    write("jwt", "own_access_token", own.as_bytes());
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let none_claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"iss":"{KEY_CLIENT}","sub":"{KEY_CLIENT}","aud":"{ISSUER}","exp":{}}}"#,
        NOW + 60
    ));
    write(
        "jwt",
        "alg_none",
        format!("{none_header}.{none_claims}.").as_bytes(),
    );
    write("jwt", "not_a_jwt", b"not-a-jwt");

    let basic = basic_header();
    let aud = "audience=https%3A%2F%2Fapi.fuzz";
    write(
        "token_request",
        "client_secret_basic",
        format!("{basic}\ngrant_type=client_credentials&{aud}&scope=read+write%3Aa").as_bytes(),
    );
    write(
        "token_request",
        "client_secret_post",
        format!(
            "\ngrant_type=client_credentials&client_id={SECRET_CLIENT}&client_secret={SECRET}&resource=https%3A%2F%2Fapi.fuzz"
        )
        .as_bytes(),
    );
    write(
        "token_request",
        "tenants",
        format!("{basic}\ngrant_type=client_credentials&tenant=t1&tenant=t2&limit=1").as_bytes(),
    );
    write(
        "token_request",
        "private_key_jwt",
        format!(
            "\ngrant_type=client_credentials&client_id={KEY_CLIENT}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={es}&{aud}"
        )
        .as_bytes(),
    );
    write(
        "token_request",
        "introspect_revoke",
        format!("{basic}\ntoken={own}&token_type_hint=access_token").as_bytes(),
    );
    write(
        "token_request",
        "token_exchange",
        format!(
            "{basic}\ngrant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={own}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token&{aud}"
        )
        .as_bytes(),
    );
    write(
        "token_request",
        "repeated_and_malformed",
        b"Basic Zm9vOg==\ngrant_type=a&grant_type=b&=x&%zz=%&scope=&&audience=a&audience=b",
    );

    let idp_jwk = signing_key(KeyAlgorithm::ES256, "idp", IDP_PEM).public_jwk();
    let ed_jwk = signing_key(KeyAlgorithm::EdDSA, "client-ed", CLIENT_ED_PEM).public_jwk();
    let rsa_jwk = crypto::generate_key(KeyAlgorithm::RS256)
        .unwrap()
        .public_jwk;
    write(
        "jwks",
        "idp",
        &serde_json::to_vec(&json!({ "keys": [idp_jwk.clone()] })).unwrap(),
    );
    write(
        "jwks",
        "mixed",
        &serde_json::to_vec(&json!({"keys": [
            ed_jwk, rsa_jwk.clone(),
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": rsa_jwk.n, "e": "AQAB"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "use": "enc", "x": idp_jwk.x, "y": idp_jwk.y},
            {"no": "kty"}, 7, null
        ]}))
        .unwrap(),
    );
    write(
        "jwks",
        "one_jwk",
        &serde_json::to_vec(&signing_key(KeyAlgorithm::ES256, "signer", SIGNER_PEM).public_jwk())
            .unwrap(),
    );
    write("jwks", "empty", br#"{"keys": []}"#);

    write(
        "discovery",
        "openid_configuration",
        &serde_json::to_vec(&json!({
            "issuer": IDP, "jwks_uri": "https://idp.fuzz/keys",
            "token_endpoint": "https://idp.fuzz/token",
            "id_token_signing_alg_values_supported": ["ES256"]
        }))
        .unwrap(),
    );
    write(
        "discovery",
        "kubernetes",
        br#"{"issuer":"https://kubernetes.default.svc.cluster.local","jwks_uri":"https://10.0.0.1:6443/openid/v1/jwks","response_types_supported":["id_token"]}"#,
    );
    write(
        "discovery",
        "wrong_issuer",
        br#"{"issuer":"https://idp.fuzz/","jwks_uri":"/keys"}"#,
    );
    write(
        "discovery",
        "odd_uris",
        br#"{"issuer":"https://idp.fuzz","jwks_uri":"http://[::1]:99999/%zz?x#y"}"#,
    );

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for name in [
        "serviceaccount-api.yaml",
        "serviceaccount-client-secret.yaml",
        "serviceaccount-private-key-jwt.yaml",
        "tokengrant-delegation.yaml",
        "trustedissuer-inline-jwks.yaml",
        "trustedissuer-azure.yaml",
    ] {
        write(
            "manifests",
            name.trim_end_matches(".yaml"),
            &std::fs::read(examples.join(name)).unwrap(),
        );
    }
    write(
        "manifests",
        "anchors_and_broken",
        b"apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: &m {name: a, namespace: n}\nspec: {api: {audience: x}, audiences: [x, x], tokenLifetime: 1h}\n---\napiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: *m\nspec: {}\n---\napiVersion: s2s.dev/v1alpha1\nkind: TokenGrant\nmetadata: {name: g}\nspec: {subject: {serviceAccount: {name: a, namespace: n}}, audience: x, scopes: ['*']}\n---\napiVersion: v1\nkind: ConfigMap\n---\n[unclosed\n",
    );
}
