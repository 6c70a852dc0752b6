//! `kubectl s2s token serviceaccount/NAME --audience A [--scope S…] [--decode]`: a test token
//! from the account's own credentials, obtained from the token server through the API
//! server's service proxy (`--server-url` to go elsewhere). This is the one command whose
//! job is to print a token; it never prints the credentials it used.

use kube::Api;

use super::conn::{Kind, Kube, TokenServer, api_error, connect, parse_ref};
use super::creds::{self, AccountCredentials};
use super::{CliError, Global, Output, Result, print_structured};
use crate::api::ServiceAccount;

/// `kubectl s2s token`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    kubectl s2s token serviceaccount/billing-worker -n billing --audience https://orders.example.com --scope orders:read\n  \
    kubectl s2s token s2ssa/billing-worker -n billing --audience https://orders.example.com --decode\n  \
    curl -H \"Authorization: Bearer $(kubectl s2s token s2ssa/billing-worker -n billing --audience https://orders.example.com)\" …\n\n\
    Needs `get` on the account's credentials Secret, and `get`/`create` on services/proxy of the \
    token server Service (or --server-url).")]
pub struct TokenArgs {
    /// `serviceaccount/NAME`.
    pub target: String,
    /// The audience (the API) the token is for.
    #[arg(long)]
    pub audience: String,
    /// A scope to ask for (repeatable; default: what the grants give).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Also print the token's header and claims (not verified: `kubectl s2s inspect` does).
    #[arg(long)]
    pub decode: bool,
    /// `text` prints the token alone; `json`/`yaml` the whole token response.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The form of a `client_credentials` request.
pub fn token_form(audience: &str, scopes: &[String], auth: &creds::ClientAuth) -> String {
    crate::agent::upstream::client_credentials_form(audience, scopes, &auth.form)
}

/// What to do about a refused token request.
pub fn refusal_hint(error: &str, sa: &str, ns: &str) -> String {
    match error {
        "invalid_client" => format!(
            "the token server does not accept the account's credentials: is it Ready, and did a \
             rotation just happen? `kubectl s2s status serviceaccount/{sa} -n {ns}`"
        ),
        "invalid_scope" | "invalid_target" | "unauthorized_client" | "access_denied" => format!(
            "no TokenGrant gives this account that audience and those scopes: \
             `kubectl s2s status serviceaccount/{sa} -n {ns}` lists its grants"
        ),
        _ => format!("`kubectl s2s status serviceaccount/{sa} -n {ns}` and `kubectl s2s check`"),
    }
}

/// The account `name` in the connection's namespace.
pub async fn account(kube: &Kube, name: &str) -> Result<ServiceAccount> {
    let api: Api<ServiceAccount> = Api::namespaced(kube.client.clone(), &kube.namespace);
    api.get(name).await.map_err(|e| {
        api_error(
            e,
            "get",
            Kind::ServiceAccount.resource(),
            Some(name),
            Some(&kube.namespace),
        )
    })
}

/// Asks for a token; the token response as JSON.
pub async fn request(
    server: &TokenServer,
    c: &AccountCredentials,
    audience: &str,
    scopes: &[String],
    sa: &str,
    ns: &str,
) -> Result<serde_json::Value> {
    let auth = c.client_auth(jsonwebtoken::get_current_timestamp())?;
    let form = token_form(audience, scopes, &auth);
    let answer = server.post_form("/oauth2/token", form).await?;
    let json = answer.json();
    match json {
        Some(v) if answer.status == 200 && v["access_token"].is_string() => Ok(v),
        _ => {
            let error = answer
                .json()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(CliError::new(format!(
                "{} refused the token request ({} as {}): {}",
                server.describe(),
                sa,
                c.method_name(),
                answer.oauth_error()
            ))
            .hint(refusal_hint(&error, sa, ns)))
        }
    }
}

/// Runs `token`.
pub async fn run(g: &Global, a: TokenArgs) -> Result<()> {
    let (_, name) = parse_ref(&a.target, &[Kind::ServiceAccount])?;
    let kube = connect(g).await?;
    let sa = account(&kube, &name).await?;
    let credentials = creds::read(&kube, &sa).await?;
    let server = TokenServer::locate(&kube, g).await?;
    let response = request(
        &server,
        &credentials,
        &a.audience,
        &a.scopes,
        &name,
        &kube.namespace,
    )
    .await?;
    let token = response["access_token"].as_str().unwrap_or_default();
    match a.output {
        Output::Text => println!("{token}"),
        o => print_structured(&response, o)?,
    }
    if a.decode {
        let decoded = super::inspect::decode(token)?;
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "header": decoded.header, "claims": decoded.claims
            }))
            .unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_carries_audience_scopes_and_client_auth() {
        let auth = creds::ClientAuth {
            form: vec![("client_id", "id".into())],
        };
        assert_eq!(
            token_form("https://a", &["r".into(), "w".into()], &auth),
            "grant_type=client_credentials&audience=https%3A%2F%2Fa&scope=r+w&client_id=id"
        );
    }

    #[test]
    fn a_refusal_points_at_the_grants_or_the_credentials() {
        assert!(refusal_hint("invalid_scope", "a", "n").contains("TokenGrant"));
        assert!(refusal_hint("invalid_client", "a", "n").contains("rotation"));
    }
}
