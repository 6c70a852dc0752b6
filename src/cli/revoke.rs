//! `kubectl s2s revoke tokengrant/NAME` (sets `spec.revoked: true`: every token issued under
//! the grant is void) and `kubectl s2s revoke --token JWT` (RFC 7009 at the token server).
//!
//! RFC 7009 lets a client revoke only its own tokens, so `--token` authenticates as the
//! token's client: the ServiceAccount whose `status.clientId` is the token's `client_id`, with
//! the credentials from its Secret (the same permission `kubectl s2s token` needs).

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::conn::{Kind, Kube, TokenServer, api_code, api_error, connect, parse_ref};
use super::{CliError, Global, Result, creds};
use crate::api::{ServiceAccount, TokenGrant};

/// `kubectl s2s revoke`.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("what").required(true).args(["target", "token"])),
    after_help = "Examples:\n  kubectl s2s revoke tokengrant/billing-worker -n orders\n  \
                  kubectl s2s revoke --token eyJhbGciOi… -n billing"
)]
pub struct RevokeArgs {
    /// `tokengrant/NAME`: revoke every token issued under the grant.
    pub target: Option<String>,
    /// One access token to revoke (RFC 7009), as its own client; `-` reads it from stdin
    /// (keeps it out of the process list).
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,
}

/// The merge patch that revokes a grant.
pub fn revoke_patch() -> serde_json::Value {
    serde_json::json!({"spec": {"revoked": true}})
}

/// The account whose client id is `client_id`, among `accounts`.
pub fn owner<'a>(accounts: &'a [ServiceAccount], client_id: &str) -> Option<&'a ServiceAccount> {
    accounts.iter().find(|sa| {
        sa.status
            .as_ref()
            .and_then(|s| s.client_id.as_deref())
            .is_some_and(|c| c == client_id)
    })
}

async fn find_owner(kube: &Kube, explicit_ns: bool, client_id: &str) -> Result<ServiceAccount> {
    let res = Kind::ServiceAccount.resource();
    let ns = kube.namespace.clone();
    let namespaced = || async {
        let api: Api<ServiceAccount> = Api::namespaced(kube.client.clone(), &ns);
        api.list(&ListParams::default())
            .await
            .map(|l| l.items)
            .map_err(|e| api_error(e, "list", res, None, Some(&ns)))
    };
    let (accounts, scope) = if explicit_ns {
        (namespaced().await?, format!("namespace {ns}"))
    } else {
        let api: Api<ServiceAccount> = Api::all(kube.client.clone());
        match api.list(&ListParams::default()).await {
            Ok(l) => (l.items, "any namespace".to_owned()),
            Err(e) if api_code(&e) == Some(403) => (
                namespaced().await?,
                format!("namespace {ns} (you may not list them in every namespace)"),
            ),
            Err(e) => return Err(api_error(e, "list", res, None, None)),
        }
    };
    owner(&accounts, client_id).cloned().ok_or_else(|| {
        CliError::new(format!(
            "no ServiceAccount with client id {client_id} in {scope}"
        ))
        .hint(
            "RFC 7009 needs the token's own client to revoke it: pass -n with the account's \
             namespace; to void every token of a grant instead, `kubectl s2s revoke \
             tokengrant/NAME -n NAMESPACE`",
        )
    })
}

/// Runs `revoke`.
pub async fn run(g: &Global, a: RevokeArgs) -> Result<()> {
    let kube = connect(g).await?;
    if let Some(target) = &a.target {
        let (_, name) = parse_ref(target, &[Kind::TokenGrant])?;
        let ns = kube.namespace.clone();
        let api: Api<TokenGrant> = Api::namespaced(kube.client.clone(), &ns);
        let res = Kind::TokenGrant.resource();
        let grant = api
            .get(&name)
            .await
            .map_err(|e| api_error(e, "get", res, Some(&name), Some(&ns)))?;
        if grant.spec.revoked {
            println!("tokengrant/{name} was already revoked");
            return Ok(());
        }
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(revoke_patch()),
        )
        .await
        .map_err(|e| api_error(e, "patch", res, Some(&name), Some(&ns)))?;
        println!(
            "tokengrant/{name} revoked: every token issued under it is now refused by \
             introspection and token exchange; resource servers that verify offline keep \
             accepting them until they expire"
        );
        return Ok(());
    }
    let token = super::inspect::token_arg(&a.token.unwrap_or_default())?;
    let decoded = super::inspect::decode(&token)?;
    let client_id = decoded.claims["client_id"]
        .as_str()
        .ok_or_else(|| {
            CliError::new("the token has no client_id claim: it is not one of our access tokens")
        })?
        .to_owned();
    let sa = find_owner(&kube, g.namespace.is_some(), &client_id).await?;
    let credentials = creds::read(&kube, &sa).await?;
    let server = TokenServer::locate(&kube, g).await?;
    let now = jsonwebtoken::get_current_timestamp();
    let form = |auth: &creds::ClientAuth| {
        let mut f = form_urlencoded::Serializer::new(String::new());
        f.append_pair("token", token.trim());
        f.append_pair("token_type_hint", "access_token");
        for (k, v) in &auth.form {
            f.append_pair(k, v);
        }
        f.finish()
    };
    let auth = credentials.client_auth(now)?;
    let answer = server.post_form("/oauth2/revoke", form(&auth)).await?;
    if answer.status != 200 {
        return Err(CliError::new(format!(
            "{} refused the revocation: {}",
            server.describe(),
            answer.oauth_error()
        ))
        .hint(format!(
            "`kubectl s2s status serviceaccount/{} -n {}` (its credentials must be current)",
            sa.name_any(),
            sa.namespace().unwrap_or_default()
        )));
    }
    // RFC 7009 answers 200 for anything; introspection says whether it took.
    let auth = credentials.client_auth(now)?;
    let active = server
        .post_form("/oauth2/introspect", form(&auth))
        .await
        .ok()
        .and_then(|a| a.json())
        .and_then(|v| v["active"].as_bool());
    let jti = decoded.claims["jti"].as_str().unwrap_or("?");
    match active {
        Some(false) => {
            println!(
                "token {jti} of serviceaccount/{} revoked (introspection: active=false)",
                sa.name_any()
            );
            Ok(())
        }
        Some(true) => Err(CliError::new(format!(
            "token {jti}: the token server accepted the request but still reports it active"
        ))
        .hint("was it issued by this token server (see `kubectl s2s inspect`)?")),
        None => {
            println!("token {jti} revocation accepted (introspection did not answer)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_is_found_by_client_id() {
        let sa = |name: &str, id: &str| -> ServiceAccount {
            serde_yaml::from_str(&format!(
                "apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {{name: {name}, namespace: n}}\n\
                 spec: {{scopes: [r]}}\nstatus: {{clientId: {id}}}\n"
            ))
            .unwrap()
        };
        let all = [sa("a", "id-a"), sa("b", "id-b")];
        assert_eq!(owner(&all, "id-b").unwrap().name_any(), "b");
        assert!(owner(&all, "id-c").is_none());
        assert_eq!(revoke_patch()["spec"]["revoked"], true);
    }
}
