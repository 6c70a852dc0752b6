//! Scenarios that run unchanged against the in-process API stand-in
//! (`tests/kube_controller.rs`) and against a real cluster (`tests/e2e_cluster.rs`): the
//! controller and the token server are already running; the scenario acts as a user would
//! (kubectl through an admin client, a workload over HTTP) and checks what it sees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use oauth2::basic::BasicClient;
use oauth2::{AuthType, ClientId, ClientSecret, Scope, TokenResponse, TokenUrl};
use s2s_operator::api::{ServiceAccount, TokenGrant};
use serde_json::{Value, json};

use super::{http, jwks, verify_access_token};

/// How long to wait for what the cluster does asynchronously.
#[derive(Clone, Debug)]
pub struct Waits {
    /// For an account to become Ready, and for the token server to see a change.
    pub converge: Duration,
    /// For garbage collection of owned Secrets.
    pub gc: Duration,
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Ready condition of an account as (status, reason), once its status describes the
/// current generation.
pub fn readiness(sa: &ServiceAccount) -> Option<(String, String)> {
    let status = sa.status.as_ref()?;
    if status.observed_generation != sa.metadata.generation {
        return None;
    }
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((format!("{:?}", c.status), c.reason.clone()))
}

/// Waits until the account is Ready=True for its generation.
pub async fn wait_ready(api: &Api<ServiceAccount>, name: &str, within: Duration) -> ServiceAccount {
    eventually(within, &format!("ServiceAccount {name} Ready"), || async {
        let sa = api.get_opt(name).await.ok()??;
        (readiness(&sa)?.0 == "True").then_some(sa)
    })
    .await
}

/// A Secret's data as strings.
pub fn strings(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).unwrap()))
        .collect()
}

/// client_credentials with client_secret_basic through the `oauth2` crate; the access token
/// or the error's JSON.
pub async fn client_credentials(
    token_url: &str,
    client_id: &str,
    secret: &str,
    audience: &str,
    scope: &str,
) -> Result<String, String> {
    let client = BasicClient::new(ClientId::new(client_id.to_owned()))
        .set_client_secret(ClientSecret::new(secret.to_owned()))
        .set_token_uri(TokenUrl::new(token_url.to_owned()).unwrap())
        .set_auth_type(AuthType::BasicAuth);
    client
        .exchange_client_credentials()
        .add_scope(Scope::new(scope.to_owned()))
        .add_extra_param("audience", audience)
        .request_async(&http())
        .await
        .map(|t| t.access_token().secret().clone())
        .map_err(|e| match e {
            oauth2::RequestTokenError::ServerResponse(r) => {
                serde_json::to_string(&r).unwrap_or_default()
            }
            other => other.to_string(),
        })
}

fn objects(ns: &str, audience: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "orders-api", "namespace": ns},
            "spec": {"api": {"audience": audience, "scopes": [{"name": "orders:read"}, {"name": "orders:write"}]}}
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "worker", "namespace": ns},
            "spec": {
                "scopes": ["orders:read"],
                "audiences": [audience],
                "authentication": {"clientSecret": {"secretName": "worker-credentials", "gracePeriod": "15s"}}
            }
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": "worker", "namespace": ns},
            "spec": {"subject": {"serviceAccount": {"name": "worker"}}, "audience": audience, "scopes": ["orders:read"]}
        }),
        json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": "squatter", "namespace": ns},
            "spec": {"authentication": {"clientSecret": {"secretName": "hand-made"}}}
        }),
    ]
}

/// The whole life of a client-secret account: issue, use, rotate with grace, retire,
/// conflict with a foreign Secret, delete with garbage collection. `issuer` is the token
/// server's base URL as the controller writes it into Secrets.
pub async fn credentials_lifecycle(admin: Client, ns: &str, issuer: &str, waits: &Waits) {
    let audience = format!("https://orders.{ns}.example.com");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);

    // A Secret someone made by hand, which an account then names.
    let hand_made: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "hand-made", "namespace": ns},
        "stringData": {"client_secret": "mine"}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &hand_made)
        .await
        .unwrap();

    for o in objects(ns, &audience) {
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        if o["kind"] == "TokenGrant" {
            grants
                .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                .await
                .unwrap_or_else(|e| panic!("create TokenGrant {name}: {e}"));
        } else {
            accounts
                .create(&PostParams::default(), &serde_json::from_value(o).unwrap())
                .await
                .unwrap_or_else(|e| panic!("create ServiceAccount {name}: {e}"));
        }
    }

    // Issued: the Secret holds the credentials, owned by the account; the status holds only
    // a digest.
    let worker = wait_ready(&accounts, "worker", waits.converge).await;
    let secret = secrets.get("worker-credentials").await.unwrap();
    let owner = &secret.owner_references()[0];
    assert_eq!(owner.uid, worker.uid().unwrap());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        secret
            .labels()
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("s2s-operator")
    );
    let data = strings(&secret);
    for key in [
        "client_id",
        "client_secret",
        "token_url",
        "issuer",
        "credentials.json",
    ] {
        assert!(data.contains_key(key), "Secret lacks {key}");
    }
    let status = worker.status.clone().unwrap();
    assert_eq!(
        status.client_id.as_deref(),
        Some(data["client_id"].as_str())
    );
    assert!(status.current_credential.is_some());
    let status_text = serde_json::to_string(&status).unwrap();
    assert!(
        !status_text.contains(&data["client_secret"]),
        "no secret in status"
    );
    assert_eq!(data["token_url"], format!("{issuer}/oauth2/token"));

    // A token, once the token server has seen the account; verified with another library.
    let first_secret = data["client_secret"].clone();
    let client_id = data["client_id"].clone();
    let token_url = data["token_url"].clone();
    let token = eventually(waits.converge, "a token for worker", || async {
        client_credentials(
            &token_url,
            &client_id,
            &first_secret,
            &audience,
            "orders:read",
        )
        .await
        .ok()
    })
    .await;
    let claims = verify_access_token(&token, &jwks(issuer).await, issuer, &audience);
    assert_eq!(claims["sub"], client_id.as_str());
    assert_eq!(claims["scope"], "orders:read");
    let refused = client_credentials(&token_url, &client_id, "wrong", &audience, "orders:read")
        .await
        .unwrap_err();
    assert!(refused.contains("invalid_client"), "{refused}");

    // The hand-made Secret is left alone, and the account says why.
    let squatter = eventually(waits.converge, "squatter's SecretConflict", || async {
        let sa = accounts.get("squatter").await.ok()?;
        (readiness(&sa)? == ("False".to_owned(), "SecretConflict".to_owned())).then_some(sa)
    })
    .await;
    let untouched = secrets.get("hand-made").await.unwrap();
    assert_eq!(
        strings(&untouched),
        BTreeMap::from([("client_secret".to_owned(), "mine".to_owned())])
    );
    assert!(untouched.owner_references().is_empty());
    assert!(squatter.status.unwrap().credentials.is_empty());

    // Nothing changes while nothing is due: no write storms.
    let rv = accounts.get("worker").await.unwrap().resource_version();
    let secret_rv = secrets
        .get("worker-credentials")
        .await
        .unwrap()
        .resource_version();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(accounts.get("worker").await.unwrap().resource_version(), rv);
    assert_eq!(
        secrets
            .get("worker-credentials")
            .await
            .unwrap()
            .resource_version(),
        secret_rv
    );

    // Rotation on demand: both secrets work through the grace period.
    accounts
        .patch(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"s2s.dev/rotate": "1"}}})),
        )
        .await
        .unwrap();
    let rotated = eventually(waits.converge, "the rotated Secret", || async {
        let d = strings(&secrets.get("worker-credentials").await.ok()?);
        (d.get("client_secret") != Some(&first_secret)
            && d.get("client_secret.previous") == Some(&first_secret))
        .then_some(d)
    })
    .await;
    let second_secret = rotated["client_secret"].clone();
    assert_eq!(
        rotated["client_id"], client_id,
        "the client id never changes"
    );
    eventually(waits.converge, "the new secret to work", || async {
        client_credentials(
            &token_url,
            &client_id,
            &second_secret,
            &audience,
            "orders:read",
        )
        .await
        .ok()
    })
    .await;
    client_credentials(
        &token_url,
        &client_id,
        &first_secret,
        &audience,
        "orders:read",
    )
    .await
    .expect("the old secret still works during the grace period");

    // After the grace period only the new one works, and the old one leaves the Secret.
    eventually(
        waits.converge + Duration::from_secs(20),
        "the end of the grace period",
        || async {
            let d = strings(&secrets.get("worker-credentials").await.ok()?);
            (!d.contains_key("client_secret.previous")).then_some(())
        },
    )
    .await;
    let err = client_credentials(
        &token_url,
        &client_id,
        &first_secret,
        &audience,
        "orders:read",
    )
    .await
    .unwrap_err();
    assert!(err.contains("invalid_client"), "{err}");
    client_credentials(
        &token_url,
        &client_id,
        &second_secret,
        &audience,
        "orders:read",
    )
    .await
    .expect("the new secret works");

    // Deleting the account takes its Secret with it.
    accounts
        .delete("worker", &DeleteParams::default())
        .await
        .unwrap();
    eventually(waits.gc, "the Secret to be garbage-collected", || async {
        matches!(secrets.get_opt("worker-credentials").await, Ok(None)).then_some(())
    })
    .await;
    eventually(
        waits.converge,
        "the deleted account's tokens to stop",
        || async {
            client_credentials(
                &token_url,
                &client_id,
                &second_secret,
                &audience,
                "orders:read",
            )
            .await
            .err()
            .filter(|e| e.contains("invalid_client"))
        },
    )
    .await;
}

/// The Events recorded for an object, as (type, reason, note).
pub async fn events_for(admin: Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(admin, ns);
    api.list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Real cluster only: a projected service-account token (TokenRequest) authenticates a
/// federated ServiceAccount through the `kubernetes` TrustedIssuer preset.
pub async fn kubernetes_federation(admin: Client, ns: &str, issuer: &str, waits: &Waits) {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount as CoreServiceAccount;
    use s2s_operator::api::TrustedIssuer;

    let audience = format!("https://ledger.{ns}.example.com");
    let issuers: Api<TrustedIssuer> = Api::namespaced(admin.clone(), ns);
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), ns);
    let core: Api<CoreServiceAccount> = Api::namespaced(admin.clone(), ns);
    issuers
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "TrustedIssuer",
                "metadata": {"name": "cluster", "namespace": ns},
                "spec": {"kubernetes": {}, "audiences": ["s2s-e2e"]}
            })),
        )
        .await
        .unwrap();
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                "metadata": {"name": "ledger-api", "namespace": ns},
                "spec": {"api": {"audience": audience}}
            })),
        )
        .await
        .unwrap();
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                "metadata": {"name": "runner", "namespace": ns},
                "spec": {
                    "audiences": [audience],
                    "authentication": {"federated": [{
                        "issuerRef": {"name": "cluster"},
                        "subject": format!("system:serviceaccount:{ns}:runner")
                    }]}
                }
            })),
        )
        .await
        .unwrap();
    grants
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
                "metadata": {"name": "runner", "namespace": ns},
                "spec": {"subject": {"serviceAccount": {"name": "runner"}}, "audience": audience}
            })),
        )
        .await
        .unwrap();
    let pod_identity: CoreServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "runner", "namespace": ns}})).unwrap();
    core.create(&PostParams::default(), &pod_identity)
        .await
        .unwrap();
    let runner = wait_ready(&accounts, "runner", waits.converge).await;
    let client_id = runner.status.unwrap().client_id.unwrap();

    // What `kubectl create token runner --audience s2s-e2e` gives a pod.
    let projected = core
        .create_token_request(
            "runner",
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec!["s2s-e2e".into()],
                    expiration_seconds: Some(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", projected.as_str()),
            ("audience", audience.as_str()),
        ])
        .finish();
    let token = eventually(
        waits.converge,
        "a token for the projected identity",
        || async {
            let r = http()
                .post(format!("{issuer}/oauth2/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone())
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            v["access_token"].as_str().map(str::to_owned)
        },
    )
    .await;
    let claims = verify_access_token(&token, &jwks(issuer).await, issuer, &audience);
    assert_eq!(claims["sub"], client_id.as_str());

    // The TrustedIssuer reports its keys.
    let ti = issuers.get("cluster").await.unwrap();
    let status = ti.status.expect("TrustedIssuer status");
    assert!(status.key_count.unwrap_or(0) > 0, "{status:?}");

    // Deleting it stops acceptance.
    issuers
        .delete("cluster", &DeleteParams::default())
        .await
        .unwrap();
    eventually(waits.converge, "the issuer to be forgotten", || async {
        let r = http()
            .post(format!("{issuer}/oauth2/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .ok()?;
        (r.status() == 401).then_some(())
    })
    .await;
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// A TokenGrant with `output`: the token lands in a Secret, verifies and names the grant;
/// `spec.revoked` empties the Secret and voids the token everywhere; deletion completes (no
/// finalizer). A second grant's output token becomes inactive at the token server once the
/// grant is deleted, with nothing written anywhere. Runs against a real cluster (e2e).
pub async fn token_grant_output_and_revocation(
    admin: Client,
    ns: &str,
    issuer: &str,
    waits: &Waits,
) {
    let audience = format!("https://vault.{ns}.example.com");
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                "metadata": {"name": "vault-api", "namespace": ns},
                "spec": {"api": {"audience": audience, "scopes": [{"name": "secrets:read"}]}}
            })),
        )
        .await
        .unwrap();
    accounts
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
                "metadata": {"name": "reader", "namespace": ns},
                "spec": {"scopes": ["secrets:read"], "audiences": [audience],
                         "authentication": {"clientSecret": {"secretName": "reader"}}}
            })),
        )
        .await
        .unwrap();
    grants
        .create(&PostParams::default(), &obj(json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": "reader", "namespace": ns},
            "spec": {"subject": {"serviceAccount": {"name": "reader"}}, "audience": audience,
                     "scopes": ["secrets:read"], "output": {"secretName": "reader-token", "lifetime": "10m"}}
        })))
        .await
        .unwrap();
    let ready = |want: &'static str| {
        let grants = grants.clone();
        move || {
            let grants = grants.clone();
            async move {
                let g = grants.get("reader").await.ok()?;
                let st = g.status?;
                (st.observed_generation == g.metadata.generation
                    && st
                        .conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == want))
                .then_some(())
            }
        }
    };
    eventually(waits.converge, "the grant's output token", ready("Ready")).await;
    let out = strings(&secrets.get("reader-token").await.unwrap());
    let token = out["access_token"].clone();
    assert_eq!(out["token_type"], "Bearer");
    assert_eq!(out["authorization"], format!("Bearer {token}"));
    assert!(out.contains_key("expires_at"));
    let claims = verify_access_token(&token, &jwks(issuer).await, issuer, &audience);
    assert_eq!(claims["scope"], "secrets:read");
    let granted = grants.get("reader").await.unwrap();
    assert!(
        granted.metadata.finalizers.is_none(),
        "no finalizer: {:?}",
        granted.metadata.finalizers
    );
    assert_eq!(
        claims["grants"],
        json!([format!(
            "{ns}/reader/{}",
            granted.metadata.uid.as_deref().unwrap()
        )])
    );

    let creds = strings(&secrets.get("reader").await.unwrap());
    let introspect = || {
        let (id, secret, token) = (
            creds["client_id"].clone(),
            creds["client_secret"].clone(),
            token.clone(),
        );
        async move {
            let r = http()
                .post(format!("{issuer}/oauth2/introspect"))
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}"))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["active"].as_bool()
        }
    };
    eventually(waits.converge, "the output token to be active", || async {
        (introspect().await == Some(true)).then_some(())
    })
    .await;

    // A second grant's output token dies with the grant: deleted, not revoked.
    grants
        .create(&PostParams::default(), &obj(json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": "reader-extra", "namespace": ns},
            "spec": {"subject": {"serviceAccount": {"name": "reader"}}, "audience": audience,
                     "scopes": ["secrets:read"], "output": {"secretName": "reader-extra-token", "lifetime": "10m"}}
        })))
        .await
        .unwrap();
    let extra = eventually(waits.converge, "the second output token", || async {
        let s = secrets.get_opt("reader-extra-token").await.ok()??;
        strings(&s).get("access_token").cloned()
    })
    .await;
    let introspect_token = |t: String| {
        let (id, secret) = (creds["client_id"].clone(), creds["client_secret"].clone());
        async move {
            let r = http()
                .post(format!("{issuer}/oauth2/introspect"))
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={t}"))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["active"].as_bool()
        }
    };
    eventually(waits.converge, "the second token to be active", || async {
        (introspect_token(extra.clone()).await == Some(true)).then_some(())
    })
    .await;
    grants
        .delete("reader-extra", &DeleteParams::default())
        .await
        .unwrap();
    eventually(waits.gc, "the second grant to be gone", || async {
        matches!(grants.get_opt("reader-extra").await, Ok(None)).then_some(())
    })
    .await;
    eventually(
        waits.converge,
        "the deleted grant's token to be inactive",
        || async { (introspect_token(extra.clone()).await == Some(false)).then_some(()) },
    )
    .await;
    assert_eq!(
        introspect().await,
        Some(true),
        "the other grant's token stays active"
    );

    grants
        .patch(
            "reader",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"revoked": true}})),
        )
        .await
        .unwrap();
    eventually(waits.converge, "the grant to be revoked", ready("Revoked")).await;
    eventually(waits.converge, "the token to be void", || async {
        (introspect().await == Some(false)).then_some(())
    })
    .await;
    let after = strings(&secrets.get("reader-token").await.unwrap());
    assert!(
        !after.contains_key("access_token"),
        "a revoked token does not stay in a Secret"
    );

    // A grant whose output names a Secret it does not control never writes it.
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "taken", "namespace": ns},
                        "data": {"access_token": "bWluZQ=="}})),
        )
        .await
        .unwrap();
    grants
        .create(
            &PostParams::default(),
            &obj(json!({
                "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
                "metadata": {"name": "squatter", "namespace": ns},
                "spec": {"subject": {"serviceAccount": {"name": "reader"}}, "audience": audience,
                         "output": {"secretName": "taken", "lifetime": "5m"}}
            })),
        )
        .await
        .unwrap();
    eventually(waits.converge, "the squatter's SecretConflict", || async {
        let g = grants.get("squatter").await.ok()?;
        let st = g.status?;
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "SecretConflict")
            .then_some(())
    })
    .await;
    let taken = strings(&secrets.get("taken").await.unwrap());
    assert_eq!(
        taken,
        BTreeMap::from([("access_token".to_owned(), "mine".to_owned())])
    );

    grants
        .delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    eventually(waits.gc, "the grant to be gone", || async {
        matches!(grants.get_opt("reader").await, Ok(None)).then_some(())
    })
    .await;
}

/// An AccessToken for two audiences in the client's namespace: Ready once both API owners'
/// grants exist, its Secret's token verifies for each audience and is active at the token
/// server; deleting one grant makes it Ready=False `NotGranted`, takes the token out of the
/// Secret and voids it; the grant back brings a new token (a new revision).
pub async fn access_token_lifecycle(admin: Client, ns: &str, issuer: &str, waits: &Waits) {
    use s2s_operator::api::AccessToken;
    let (orders, stock) = (
        // Audiences of their own: earlier scenarios in this namespace claim orders.{ns}.
        format!("https://at-orders.{ns}.example.com"),
        format!("https://at-stock.{ns}.example.com"),
    );
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let grants: Api<TokenGrant> = Api::namespaced(admin.clone(), ns);
    let tokens: Api<AccessToken> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    let pp = PostParams::default();
    for (name, audience) in [("at-orders", &orders), ("at-stock", &stock)] {
        let api = obj(json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"api": {"audience": audience},
                     "authentication": {"clientSecret": {"secretName": format!("{name}-creds")}}}
        }));
        accounts.create(&pp, &api).await.unwrap();
    }
    let client = obj(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "ServiceAccount",
        "metadata": {"name": "at-client", "namespace": ns},
        "spec": {"scopes": ["data:read", "data:write"], "audiences": [orders, stock],
                 "authentication": {"clientSecret": {"secretName": "at-client-creds"}}}
    }));
    accounts.create(&pp, &client).await.unwrap();
    let grant = |name: &str, audience: &str, scopes: Value| -> TokenGrant {
        obj(json!({
            "apiVersion": "s2s.dev/v1alpha1", "kind": "TokenGrant",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"subject": {"serviceAccount": {"name": "at-client"}}, "audience": audience,
                     "scopes": scopes}
        }))
    };
    grants
        .create(
            &pp,
            &grant("at-orders", &orders, json!(["data:read", "data:write"])),
        )
        .await
        .unwrap();
    let stock_grant = grant("at-stock", &stock, json!(["data:read"]));
    grants.create(&pp, &stock_grant).await.unwrap();
    let token: AccessToken = obj(json!({
        "apiVersion": "s2s.dev/v1alpha1", "kind": "AccessToken",
        "metadata": {"name": "both", "namespace": ns},
        "spec": {"serviceAccountName": "at-client", "audiences": [orders, stock],
                 "secretName": "both-token", "lifetime": "10m"}
    }));
    tokens.create(&pp, &token).await.unwrap();
    let state = |want: &'static str| {
        let tokens = tokens.clone();
        move || {
            let tokens = tokens.clone();
            async move {
                let t = tokens.get("both").await.ok()?;
                let st = t.status?;
                let ready = st.conditions.iter().find(|c| c.type_ == "Ready")?;
                (st.observed_generation == t.metadata.generation && ready.reason == want)
                    .then_some(st)
            }
        }
    };
    let st = eventually(waits.converge, "the AccessToken Ready", state("Ready")).await;
    assert_eq!(st.revision, Some(1));
    let data = strings(&secrets.get("both-token").await.unwrap());
    let jwt = data["access_token"].clone();
    let keys = jwks(issuer).await;
    for audience in [&orders, &stock] {
        let claims = verify_access_token(&jwt, &keys, issuer, audience);
        assert_eq!(claims["aud"].as_array().map(Vec::len), Some(2));
        // data:write is granted at orders only: the token carries what both allow.
        assert_eq!(claims["scope"], "data:read", "{claims:#}");
    }
    let api_creds = wait_secret(&secrets, "at-stock-creds", waits).await;
    let active = || {
        let (id, secret, jwt) = (
            api_creds["client_id"].clone(),
            api_creds["client_secret"].clone(),
            jwt.clone(),
        );
        async move {
            let r = http()
                .post(format!("{issuer}/oauth2/introspect"))
                .basic_auth(id, Some(secret))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={jwt}"))
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["active"].as_bool()
        }
    };
    eventually(waits.converge, "the AccessToken's token active", || async {
        (active().await == Some(true)).then_some(())
    })
    .await;

    // The stock owner withdraws its grant.
    grants
        .delete("at-stock", &DeleteParams::default())
        .await
        .unwrap();
    let st = eventually(
        waits.converge,
        "the AccessToken NotGranted",
        state("NotGranted"),
    )
    .await;
    assert!(st.token_id.is_none() && st.not_after.is_none());
    let data = strings(&secrets.get("both-token").await.unwrap());
    assert!(
        !data.contains_key("access_token"),
        "the token left the Secret"
    );
    eventually(waits.converge, "the withdrawn token inactive", || async {
        (active().await == Some(false)).then_some(())
    })
    .await;

    // Granted again: a new token.
    grants.create(&pp, &stock_grant).await.unwrap();
    let st = eventually(
        waits.converge,
        "the AccessToken Ready again",
        state("Ready"),
    )
    .await;
    assert_eq!(st.revision, Some(2));
    tokens
        .delete("both", &DeleteParams::default())
        .await
        .unwrap();
}

/// The Secret's data once it exists.
async fn wait_secret(secrets: &Api<Secret>, name: &str, waits: &Waits) -> BTreeMap<String, String> {
    eventually(waits.converge, &format!("Secret {name}"), || async {
        secrets.get_opt(name).await.ok()?.map(|s| strings(&s))
    })
    .await
}
