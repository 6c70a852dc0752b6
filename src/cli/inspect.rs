//! `kubectl s2s inspect JWT`: header and claims, the signature checked against the issuer's
//! JWKS (fetched from the token server), valid or why not, scopes, the `act` chain and the
//! TokenGrants that allowed it (claim `grants`: `namespace/name/uid`).
//!
//! [`examine`] is pure: the token, the JWKS, the issuer and the clock in, a verdict out.

use std::io::Read;
use std::time::SystemTime;

use jsonwebtoken::Validation;
use kube::{Api, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::conn::{Kube, TokenServer, api_code, connect};
use super::format::{now_unix, when};
use super::{CliError, Global, Output, Result, print_structured};
use crate::api::{Jwk, TokenGrant};

/// Tokens longer than this are refused before decoding (the token server's own bound is
/// far lower).
const MAX_TOKEN: usize = 64 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, as the token server does.
const SKEW: i64 = 60;

/// `kubectl s2s inspect`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  kubectl s2s inspect eyJhbGciOi…\n  \
    kubectl s2s token s2ssa/billing-worker -n billing --audience https://orders.example.com | kubectl s2s inspect -\n\n\
    Exits 1 when the token is not valid now.")]
pub struct InspectArgs {
    /// The JWT, or `-` to read it from stdin.
    pub token: String,
    /// Decode only; do not fetch the JWKS or look up grants.
    #[arg(long)]
    pub offline: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// A JWT's header and claims, not verified.
#[derive(Debug, Clone, Serialize)]
pub struct Decoded {
    /// The header.
    pub header: Value,
    /// The claims.
    pub claims: Value,
}

/// Decodes without verifying (for display and to find the key; nothing is trusted from it).
pub fn decode(token: &str) -> Result<Decoded> {
    let token = token.trim();
    if token.len() > MAX_TOKEN {
        return Err(CliError::new("that is too long to be one of our tokens"));
    }
    let bad = |e: jsonwebtoken::errors::Error| {
        CliError::new(format!("not a JWT: {e}"))
            .hint("pass the access token itself (three base64url parts separated by dots)")
    };
    let header = jsonwebtoken::decode_header(token).map_err(bad)?;
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(bad)?;
    Ok(Decoded {
        header: serde_json::to_value(header).unwrap_or(Value::Null),
        claims,
    })
}

/// What became of one grant a token names.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GrantState {
    /// `namespace/name/uid` as the token names it.
    pub grant: String,
    /// In force, revoked, deleted, replaced, or unknown.
    pub state: String,
}

/// The verdict on a token.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inspection {
    /// Header and claims.
    #[serde(flatten)]
    pub decoded: Decoded,
    /// Valid now: signature, issuer, time, type all right.
    pub valid: bool,
    /// The signature check.
    pub signature: String,
    /// Why not valid (empty when valid).
    pub problems: Vec<String>,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Actors, outermost (the current actor) first.
    pub act_chain: Vec<String>,
    /// The grants it was issued under.
    pub grants: Vec<GrantState>,
}

/// The actors of an `act` claim, the current one first (RFC 8693 §4.1).
pub fn act_chain(claims: &Value) -> Vec<String> {
    let mut chain = vec![];
    let mut act = claims.get("act");
    while let Some(a) = act.filter(|a| a.is_object()) {
        let sub = a["sub"].as_str().unwrap_or("?");
        let client = a
            .get("client_id")
            .and_then(|c| c.as_str())
            .map(|c| format!(" (client {c})"))
            .unwrap_or_default();
        chain.push(format!("{sub}{client}"));
        act = a.get("act");
    }
    chain
}

/// Examines `token` against the JWKS `keys` of `issuer` at `now` (Unix seconds); `keys` is
/// `None` when they could not be fetched (`why`).
pub fn examine(
    token: &str,
    decoded: Decoded,
    keys: std::result::Result<&[Jwk], &str>,
    issuer: Option<&str>,
    now: i64,
) -> Inspection {
    let mut problems = vec![];
    let h = &decoded.header;
    let c = &decoded.claims;
    let kid = h["kid"].as_str();
    let signature = match keys {
        Err(why) => {
            problems.push(format!("signature not checked: {why}"));
            "not checked".to_owned()
        }
        Ok(keys) => match keys
            .iter()
            .find(|k| k.kid.as_deref() == kid && kid.is_some())
        {
            None => {
                let msg = format!(
                    "signed with key {}, which the issuer's JWKS does not hold (a key retired \
                     long ago, another issuer, or a forged token)",
                    kid.unwrap_or("(no kid)")
                );
                problems.push(msg.clone());
                msg
            }
            Some(jwk) => match crate::crypto::decoding_key(jwk) {
                Err(e) => {
                    let msg = format!("the JWKS key {} is unusable: {e}", kid.unwrap_or(""));
                    problems.push(msg.clone());
                    msg
                }
                Ok((dk, alg)) => {
                    let mut v = Validation::new(alg);
                    v.validate_exp = false;
                    v.validate_nbf = false;
                    v.validate_aud = false;
                    v.required_spec_claims.clear();
                    match jsonwebtoken::decode::<Value>(token.trim(), &dk, &v) {
                        Ok(_) => format!("valid ({alg:?}, key {})", kid.unwrap_or("")),
                        Err(e) => {
                            let msg = match e.kind() {
                                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => format!(
                                    "wrong algorithm: header says {}, key {} is {alg:?}",
                                    h["alg"].as_str().unwrap_or("?"),
                                    kid.unwrap_or("")
                                ),
                                _ => format!(
                                    "signature does not verify with key {} ({e}): the token was \
                                     altered or signed by someone else",
                                    kid.unwrap_or("")
                                ),
                            };
                            problems.push(msg.clone());
                            msg
                        }
                    }
                }
            },
        },
    };
    if let Some(want) = issuer
        && c["iss"].as_str() != Some(want)
    {
        problems.push(format!(
            "issuer is {}, this token server is {want}",
            c["iss"].as_str().unwrap_or("(none)")
        ));
    }
    match c["exp"].as_i64() {
        None => problems.push("no exp claim".into()),
        Some(exp) if exp + SKEW < now => problems.push(format!("expired {}", when(exp, now))),
        Some(_) => {}
    }
    if let Some(nbf) = c["nbf"].as_i64()
        && nbf - SKEW > now
    {
        problems.push(format!("not valid yet: nbf {}", when(nbf, now)));
    }
    if h["typ"].as_str() != Some("at+jwt") {
        problems.push(format!(
            "typ is {}, not at+jwt: not an access token (RFC 9068)",
            h["typ"].as_str().unwrap_or("(none)")
        ));
    }
    let scopes = c["scope"]
        .as_str()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let grants = c["grants"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g.as_str())
                .map(|g| GrantState {
                    grant: g.to_owned(),
                    state: "not looked up".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    Inspection {
        valid: problems.is_empty(),
        signature,
        problems,
        scopes,
        act_chain: act_chain(c),
        grants,
        decoded,
    }
}

/// What became of a grant `ns/name/uid`, given what the API has under `ns/name`
/// (`Ok(None)`: gone; `Err`: could not look).
pub fn grant_state(uid: &str, found: std::result::Result<Option<&TokenGrant>, &str>) -> String {
    match found {
        Err(why) => format!("unknown ({why})"),
        Ok(None) => "deleted: every token issued under it is void".into(),
        Ok(Some(g)) if g.uid().as_deref() != Some(uid) => {
            "replaced (deleted and created again): tokens of the old one are void".into()
        }
        Ok(Some(g)) if g.spec.revoked => "revoked (spec.revoked): void".into(),
        Ok(Some(_)) => "in force".into(),
    }
}

async fn look_up_grants(kube: &Kube, grants: &mut [GrantState]) {
    for g in grants {
        let parts: Vec<&str> = g.grant.splitn(3, '/').collect();
        let [ns, name, uid] = parts[..] else {
            g.state = "unknown (not namespace/name/uid)".into();
            continue;
        };
        let api: Api<TokenGrant> = Api::namespaced(kube.client.clone(), ns);
        g.state = match api.get_opt(name).await {
            Ok(found) => grant_state(uid, Ok(found.as_ref())),
            Err(e) if api_code(&e) == Some(403) => grant_state(
                uid,
                Err(&format!("you may not get tokengrants.s2s.dev in {ns}")),
            ),
            Err(e) => grant_state(uid, Err(&e.to_string())),
        };
    }
}

/// The issuer's keys and name, from the token server.
pub async fn fetch_keys(server: &TokenServer) -> Result<(Vec<Jwk>, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<Jwk>,
    }
    let answer = server.get("/jwks.json").await?;
    if answer.status != 200 {
        return Err(CliError::new(format!(
            "{} answered {} for /jwks.json",
            server.describe(),
            answer.status
        )));
    }
    let set: Set = serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::new(format!("the JWKS is not a key set: {e}")))?;
    let issuer = match server.get("/.well-known/openid-configuration").await {
        Ok(a) if a.status == 200 => a
            .json()
            .and_then(|v| v["issuer"].as_str().map(str::to_owned)),
        _ => None,
    };
    Ok((set.keys, issuer))
}

/// An inspection as text.
pub fn render(i: &Inspection, now: i64) -> String {
    let c = &i.decoded.claims;
    let mut out = String::new();
    out.push_str(&format!(
        "Valid:      {}\n",
        if i.valid { "yes" } else { "NO" }
    ));
    for p in &i.problems {
        out.push_str(&format!("  - {p}\n"));
    }
    out.push_str(&format!("Signature:  {}\n", i.signature));
    let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
    out.push_str(&format!("Issuer:     {}\n", s("iss")));
    out.push_str(&format!("Subject:    {}\n", s("sub")));
    let aud = match &c["aud"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        v => v.as_str().unwrap_or("").to_owned(),
    };
    out.push_str(&format!("Audience:   {aud}\n"));
    out.push_str(&format!("Client ID:  {}\n", s("client_id")));
    out.push_str(&format!("Scopes:     {}\n", i.scopes.join(" ")));
    if let Some(t) = c["tenant"].as_str() {
        out.push_str(&format!("Tenant:     {t}\n"));
    }
    if let Some(iat) = c["iat"].as_i64() {
        out.push_str(&format!("Issued:     {}\n", when(iat, now)));
    }
    if let Some(exp) = c["exp"].as_i64() {
        out.push_str(&format!("Expires:    {}\n", when(exp, now)));
    }
    out.push_str(&format!("Token ID:   {}\n", s("jti")));
    if !i.act_chain.is_empty() {
        out.push_str(&format!(
            "Acting:     {} (on behalf of {})\n",
            i.act_chain.join(" ← "),
            s("sub")
        ));
    }
    if !i.grants.is_empty() {
        out.push_str("Grants:\n");
        for g in &i.grants {
            out.push_str(&format!("  {}  {}\n", g.grant, g.state));
        }
    }
    out.push_str(&format!(
        "\nHeader: {}\nClaims: {}\n",
        serde_json::to_string(&i.decoded.header).unwrap_or_default(),
        serde_json::to_string_pretty(c).unwrap_or_default()
    ));
    out
}

/// A token given on the command line, or read from stdin for `-` (at most [`MAX_TOKEN`]
/// bytes), so it need not appear in the process list.
pub fn token_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut s = String::new();
    std::io::stdin()
        .take(MAX_TOKEN as u64 + 1)
        .read_to_string(&mut s)
        .map_err(|e| CliError::new(format!("reading the token from stdin: {e}")))?;
    Ok(s.trim().to_owned())
}

/// Runs `inspect`.
pub async fn run(g: &Global, a: InspectArgs) -> Result<()> {
    let token = token_arg(&a.token)?;
    let decoded = decode(&token)?;
    let now = now_unix(SystemTime::now());
    let mut inspection = if a.offline {
        examine(&token, decoded, Err("--offline"), None, now)
    } else {
        let kube = connect(g).await?;
        let fetched = match TokenServer::locate(&kube, g).await {
            Ok(server) => fetch_keys(&server).await,
            Err(e) => Err(e),
        };
        let mut i = match &fetched {
            Ok((keys, issuer)) => examine(&token, decoded, Ok(keys), issuer.as_deref(), now),
            Err(e) => examine(&token, decoded, Err(&e.message), None, now),
        };
        look_up_grants(&kube, &mut i.grants).await;
        if i.grants.iter().any(|g| g.state != "in force") && !i.grants.is_empty() {
            let void: Vec<_> = i
                .grants
                .iter()
                .filter(|g| !g.state.starts_with("in force") && !g.state.starts_with("unknown"))
                .collect();
            if !void.is_empty() {
                i.problems.push(format!(
                    "grant {} is no longer in force: the token server treats the token as revoked",
                    void[0].grant
                ));
                i.valid = false;
            }
        }
        i
    };
    if !inspection.grants.is_empty() && a.offline {
        for g in &mut inspection.grants {
            g.state = "not looked up (--offline)".into();
        }
    }
    match a.output {
        Output::Text => print!("{}", render(&inspection, now)),
        o => print_structured(&inspection, o)?,
    }
    if inspection.valid {
        Ok(())
    } else {
        Err(CliError::new(format!(
            "the token is not valid: {}",
            inspection.problems.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyAlgorithm, generate_key, sign_jwt};

    const NOW: i64 = 1_800_000_000;

    fn token(key: &crate::crypto::GeneratedKey, typ: &str, claims: Value) -> String {
        let sk =
            crate::crypto::SigningKey::from_pem(key.algorithm, &key.kid, &key.private_pem).unwrap();
        sign_jwt(&sk, typ, &claims).unwrap()
    }

    fn claims(exp: i64) -> Value {
        serde_json::json!({
            "iss": "https://s2s.example", "sub": "c1", "aud": "https://orders",
            "exp": exp, "iat": exp - 3600, "nbf": exp - 3600, "jti": "j1",
            "client_id": "c1", "scope": "orders:read orders:write",
            "grants": ["orders/g1/u1"],
            "act": {"sub": "svc-a", "act": {"sub": "svc-b"}},
        })
    }

    #[test]
    fn a_good_token_is_valid_with_scopes_act_chain_and_grants() {
        let key = generate_key(KeyAlgorithm::ES256).unwrap();
        let t = token(&key, "at+jwt", claims(NOW + 600));
        let i = examine(
            &t,
            decode(&t).unwrap(),
            Ok(std::slice::from_ref(&key.public_jwk)),
            Some("https://s2s.example"),
            NOW,
        );
        assert!(i.valid, "{:?}", i.problems);
        assert!(i.signature.starts_with("valid (ES256"), "{}", i.signature);
        assert_eq!(i.scopes, ["orders:read", "orders:write"]);
        assert_eq!(i.act_chain, ["svc-a", "svc-b"]);
        assert_eq!(i.grants[0].grant, "orders/g1/u1");
        let text = render(&i, NOW);
        assert!(text.contains("Valid:      yes"), "{text}");
        assert!(text.contains("svc-a ← svc-b"), "{text}");
    }

    #[test]
    fn expired_wrong_key_wrong_issuer_and_wrong_type_each_say_why() {
        let key = generate_key(KeyAlgorithm::ES256).unwrap();
        let other = generate_key(KeyAlgorithm::ES256).unwrap();
        let t = token(&key, "at+jwt", claims(NOW - 3600));
        let i = examine(
            &t,
            decode(&t).unwrap(),
            Ok(std::slice::from_ref(&key.public_jwk)),
            None,
            NOW,
        );
        assert!(!i.valid);
        assert!(
            i.problems.iter().any(|p| p.starts_with("expired")),
            "{:?}",
            i.problems
        );

        let i = examine(
            &t,
            decode(&t).unwrap(),
            Ok(std::slice::from_ref(&other.public_jwk)),
            None,
            NOW,
        );
        assert!(
            i.problems.iter().any(|p| p.contains("does not hold")),
            "{:?}",
            i.problems
        );

        // The right kid but another key's material: a forged signature.
        let mut impostor = other.public_jwk.clone();
        impostor.kid = key.public_jwk.kid.clone();
        let t = token(&key, "JWT", claims(NOW + 600));
        let i = examine(
            &t,
            decode(&t).unwrap(),
            Ok(std::slice::from_ref(&impostor)),
            Some("https://elsewhere"),
            NOW,
        );
        let all = i.problems.join("\n");
        assert!(all.contains("does not verify"), "{all}");
        assert!(all.contains("issuer is https://s2s.example"), "{all}");
        assert!(all.contains("not at+jwt"), "{all}");

        let i = examine(&t, decode(&t).unwrap(), Err("offline"), None, NOW);
        assert_eq!(i.signature, "not checked");
        assert!(!i.valid);
    }

    #[test]
    fn garbage_is_not_a_jwt() {
        assert!(decode("nope").unwrap_err().message.starts_with("not a JWT"));
    }

    #[test]
    fn grant_states_follow_uid_and_revocation() {
        let mut g: TokenGrant = serde_yaml::from_str(
            "apiVersion: s2s.dev/v1alpha1\nkind: TokenGrant\nmetadata: {name: g1, namespace: orders, uid: u1}\n\
             spec: {subject: {serviceAccount: {name: a}}, audience: x, scopes: [r]}\n",
        )
        .unwrap();
        assert_eq!(grant_state("u1", Ok(Some(&g))), "in force");
        assert!(grant_state("u0", Ok(Some(&g))).starts_with("replaced"));
        assert!(grant_state("u1", Ok(None)).starts_with("deleted"));
        g.spec.revoked = true;
        assert!(grant_state("u1", Ok(Some(&g))).starts_with("revoked"));
        assert!(grant_state("u1", Err("no")).starts_with("unknown"));
    }
}
