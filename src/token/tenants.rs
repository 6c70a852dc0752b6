//! Multi-tenant access (the seeds' token management service). A **tenant** is a namespace
//! that granted a client access to its data: a TokenGrant there, naming the client as
//! subject, with `spec.tenant` set (the tenant's id) and an audience claimed in that same
//! namespace. A client asks for one token per tenant — at most
//! [`Config::max_tenants_per_request`](super::Config) in one request, all or nothing — and
//! lists the tenants that granted it, page by page.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};

use super::audience::Audience;
use super::core::{Core, Mint, TokenResponse, authorize};
use super::error::{ErrorCode, OAuthError};
use super::registry::{self, Client, Grant, Registry};
use super::request::{ClientAuth, Params};

/// Largest page of `GET /v1/tenants`.
pub const MAX_PAGE: usize = 100;
/// Page size when `limit` is absent.
pub const DEFAULT_PAGE: usize = 10;

/// The answer to a multi-tenant token request.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TenantTokens {
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// One token per tenant asked for, in tenant order.
    pub tokens: Vec<TenantToken>,
}

/// One tenant's token in a multi-tenant answer.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TenantToken {
    /// The tenant.
    pub tenant: String,
    /// The token, its type, lifetime and scopes, as for a single token.
    #[serde(flatten)]
    pub token: TokenResponse,
}

impl Core {
    /// A token for one tenant: the tenant's grant decides the audience (or must match the
    /// asked one) and the scopes.
    pub(super) fn tenant_token(
        &self,
        registry: &Registry,
        client: &Client,
        tenant: &str,
        params: &Params,
    ) -> Result<TokenResponse, OAuthError> {
        let asked = requested(params);
        let grants: Vec<&Grant> = registry
            .tenant_grants(client)
            .into_iter()
            .filter(|g| g.tenant.as_deref() == Some(tenant))
            .filter(|g| asked.as_ref().is_none_or(|a| *a == g.audience))
            .collect();
        let audience = match grants
            .iter()
            .map(|g| g.audience.as_str())
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => {
                return Err(OAuthError::invalid_target(format!(
                    "tenant {tenant} has not granted this client access"
                )));
            }
            [first, rest @ ..] if rest.iter().all(|a| a == first) => (*first).to_owned(),
            _ => {
                return Err(OAuthError::invalid_target(format!(
                    "tenant {tenant} granted several audiences: name one"
                )));
            }
        };
        if !client.audiences.contains(&audience) {
            return Err(OAuthError::invalid_target(format!(
                "audience {audience} is not among the account's audiences"
            )));
        }
        // The scopes as for any one-audience token, from this tenant's grants only.
        let audience = Audience::one(audience);
        let authorized = authorize(
            registry,
            &audience,
            &client.scopes,
            &params.scopes(),
            |_| grants.clone(),
        )
        .map_err(|e| match e {
            Ok(mut refused) => {
                refused.description = format!("{} by tenant {tenant}", refused.description);
                refused
            }
            // Not reached: the tenant's grants are there (checked above).
            Err(aud) => OAuthError::invalid_target(format!(
                "tenant {tenant} has not granted this client access to {aud}"
            )),
        })?;
        self.mint(Mint {
            sub: client.client_id.clone(),
            client_id: client.client_id.clone(),
            lifetime: client.token_lifetime,
            audience,
            scope: authorized.scope,
            tenant: Some(tenant.to_owned()),
            act: None,
            grants: registry::grant_refs(authorized.grants),
        })
    }

    /// `POST /oauth2/token` with several `tenant` parameters (client credentials): one token
    /// per tenant, or an error and nothing issued.
    pub fn tenant_tokens(
        &self,
        auth: &ClientAuth,
        params: &Params,
    ) -> Result<TenantTokens, OAuthError> {
        if params.get("grant_type") != Some(super::core::CLIENT_CREDENTIALS) {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                "tokens for several tenants come from client_credentials",
            ));
        }
        let registry = self.registry.load();
        let client = self.authenticate(&registry, auth)?;
        let mut tenants: Vec<&String> = params.all("tenant").iter().collect();
        tenants.sort();
        tenants.dedup();
        let max = self.config.max_tenants_per_request;
        if tenants.len() > max {
            return Err(OAuthError::invalid_request(format!(
                "at most {max} tenants per request; {} were asked",
                tenants.len()
            )));
        }
        // Decide everything before signing anything: all or nothing.
        let mut tokens = Vec::with_capacity(tenants.len());
        for tenant in &tenants {
            let token = self.tenant_token(&registry, &client, tenant, params)?;
            tokens.push(TenantToken {
                tenant: (*tenant).clone(),
                token,
            });
        }
        Ok(TenantTokens {
            token_type: "Bearer",
            tokens,
        })
    }

    /// `GET /v1/tenants`: the tenants that granted the client access, sorted, `limit` per
    /// page (default 10, at most 100), continued with the opaque `page_token` of the answer.
    pub fn tenants(
        &self,
        auth: &ClientAuth,
        query: &BTreeMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let registry = self.registry.load();
        let client = self.authenticate(&registry, auth)?;
        let limit = match query.get("limit") {
            None => DEFAULT_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    OAuthError::invalid_request(format!("limit must be 1 to {MAX_PAGE}"))
                })?,
        };
        let after = match query.get("page_token") {
            None => None,
            Some(t) => Some(
                URL_SAFE_NO_PAD
                    .decode(t)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .and_then(|s| s.strip_prefix("t1:").map(str::to_owned))
                    .ok_or_else(|| OAuthError::invalid_request("page_token is not one of ours"))?,
            ),
        };
        // One entry per tenant, with every audience and scope it granted.
        let mut by_tenant: BTreeMap<&str, (Vec<&str>, Vec<&str>, &str)> = BTreeMap::new();
        for g in registry.tenant_grants(&client) {
            let tenant = g.tenant.as_deref().expect("filtered");
            let e = by_tenant
                .entry(tenant)
                .or_insert((vec![], vec![], g.namespace.as_str()));
            e.0.push(&g.audience);
            e.1.extend(g.scopes.iter().map(String::as_str));
        }
        let mut page: Vec<Value> = vec![];
        let mut more = false;
        for (tenant, (mut audiences, mut scopes, namespace)) in by_tenant
            .into_iter()
            .filter(|(t, _)| after.as_deref().is_none_or(|a| *t > a))
        {
            if page.len() == limit {
                more = true;
                break;
            }
            audiences.dedup();
            scopes.sort();
            scopes.dedup();
            page.push(json!({
                "tenant": tenant,
                "namespace": namespace,
                "audiences": audiences,
                "scopes": scopes,
            }));
        }
        let next = more.then(|| {
            let last = page
                .last()
                .and_then(|v| v["tenant"].as_str())
                .unwrap_or_default();
            URL_SAFE_NO_PAD.encode(format!("t1:{last}"))
        });
        let mut out = json!({ "tenants": page });
        if let Some(n) = next {
            out["next_page_token"] = Value::String(n);
        }
        Ok(out)
    }
}

fn requested(params: &Params) -> Option<String> {
    params
        .all("audience")
        .first()
        .or(params.all("resource").first())
        .cloned()
}
