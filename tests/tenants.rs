//! Multi-tenant access over real HTTP against `dev`: 23 tenant namespaces each grant the
//! client `apps/kpi` access to their data API. One token per tenant (at most 5 per request,
//! all or nothing), paging through the tenants, scope wildcards, and the namespace rule.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{DevServer, http, jwks, manifests_dir, verify_access_token};

const TENANTS: usize = 23;

fn audience(i: usize) -> String {
    format!("https://data.example.com/tenants/t{i:02}")
}

fn world() -> String {
    let audiences: Vec<String> = (0..TENANTS)
        .map(|i| format!("\"{}\"", audience(i)))
        .collect();
    let mut docs = vec![format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: kpi, namespace: apps}}
spec:
  scopes: ["kpi:*"]
  audiences: [{}, "https://data.example.com/tenants/stolen"]
  authentication: {{clientSecret: {{secretName: kpi}}}}
"#,
        audiences.join(", ")
    )];
    for i in 0..TENANTS {
        docs.push(format!(
            r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {{name: data, namespace: tenant-{i:02}}}
spec: {{api: {{audience: "{aud}", scopes: [{{name: "kpi:read"}}, {{name: "kpi:write"}}, {{name: "kpi:read:raw"}}]}}}}
---
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: kpi, namespace: tenant-{i:02}}}
spec:
  subject: {{serviceAccount: {{name: kpi, namespace: apps}}}}
  audience: "{aud}"
  tenant: t{i:02}
  scopes: ["kpi:read:*", "kpi:read"]
"#,
            aud = audience(i)
        ));
    }
    // Namespace `intruder` claims nothing, yet grants access to tenant 00's API as "stolen":
    // it opens nothing.
    docs.push(format!(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TokenGrant
metadata: {{name: kpi, namespace: intruder}}
spec:
  subject: {{serviceAccount: {{name: kpi, namespace: apps}}}}
  audience: "{}"
  tenant: stolen
"#,
        audience(0)
    ));
    docs.join("---\n")
}

async fn post(s: &DevServer, form: &[(&str, &str)]) -> (u16, Value) {
    let creds = s.secret("apps", "kpi");
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let r = http()
        .post(s.token_url())
        .basic_auth(&creds["client_id"], Some(&creds["client_secret"]))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn list(s: &DevServer, query: &str) -> (u16, Value) {
    let creds = s.secret("apps", "kpi");
    let r = http()
        .get(format!("{}/v1/tenants{query}", s.issuer))
        .basic_auth(&creds["client_id"], Some(&creds["client_secret"]))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn tenants_form(n: usize) -> Vec<(&'static str, String)> {
    let mut f = vec![("grant_type", "client_credentials".to_owned())];
    for i in 0..n {
        f.push(("tenant", format!("t{i:02}")));
    }
    f
}

fn as_refs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn tokens_per_tenant_all_or_nothing_and_paging() {
    let manifests = manifests_dir(&[("world.yaml", &world())]);
    let state = tempfile::tempdir().unwrap();
    let s = DevServer::start(manifests.path(), state.path(), &[]);
    let keys = jwks(&s.issuer).await;

    // Six tenants: refused, nothing issued.
    let (status, body) = post(&s, &as_refs(&tenants_form(6))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(body.get("tokens").is_none());

    // Five: five tokens, each for its tenant's API, with the tenant claim.
    let (status, body) = post(&s, &as_refs(&tenants_form(5))).await;
    assert_eq!(status, 200, "{body}");
    let tokens = body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t["tenant"], format!("t{i:02}"));
        assert_eq!(t["token_type"], "Bearer");
        let c = verify_access_token(
            t["access_token"].as_str().unwrap(),
            &keys,
            &s.issuer,
            &audience(i),
        );
        assert_eq!(c["tenant"], format!("t{i:02}"));
        assert_eq!(
            c["scope"], "kpi:read kpi:read:raw",
            "every granted scope when none is asked"
        );
    }

    // One tenant that did not grant access spoils the request: nothing issued.
    let mut f = tenants_form(3);
    f.push(("tenant", "t99".into()));
    let (status, body) = post(&s, &as_refs(&f)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );
    // So does a grant from a namespace that does not own the audience.
    let (status, body) = post(
        &s,
        &[
            ("grant_type", "client_credentials"),
            ("tenant", "t01"),
            ("tenant", "stolen"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target")),
        "{body}"
    );

    // One tenant: the standard token response.
    let (status, body) = post(
        &s,
        &[
            ("grant_type", "client_credentials"),
            ("tenant", "t07"),
            ("scope", "kpi:read:raw"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let c = verify_access_token(
        body["access_token"].as_str().unwrap(),
        &keys,
        &s.issuer,
        &audience(7),
    );
    assert_eq!(
        (c["tenant"].as_str(), c["scope"].as_str()),
        (Some("t07"), Some("kpi:read:raw"))
    );

    // Scope wildcards: `kpi:read:*` covers `kpi:read:raw`, not `kpi:readx` nor `kpi:write`.
    for (scope, ok) in [
        ("kpi:read", true),
        ("kpi:read:raw", true),
        ("kpi:readx", false),
        ("kpi:write", false),
    ] {
        let (status, body) = post(
            &s,
            &[
                ("grant_type", "client_credentials"),
                ("tenant", "t03"),
                ("scope", scope),
            ],
        )
        .await;
        if ok {
            assert_eq!(status, 200, "{scope}: {body}");
        } else {
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("invalid_scope")),
                "{scope}"
            );
        }
    }

    // Paging through 23 tenants, 10 at a time.
    let mut seen = vec![];
    let mut query = "?limit=10".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = list(&s, &query).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let items = page["tenants"].as_array().unwrap();
        for t in items {
            seen.push(t["tenant"].as_str().unwrap().to_owned());
            assert_eq!(
                t["audiences"][0].as_str().unwrap(),
                audience(seen.len() - 1)
            );
        }
        match page["next_page_token"].as_str() {
            Some(next) => {
                assert_eq!(items.len(), 10);
                query = format!("?limit=10&page_token={next}");
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), TENANTS, "{seen:?}");
    assert_eq!(
        seen.iter().collect::<BTreeSet<_>>().len(),
        TENANTS,
        "no tenant twice"
    );
    assert!(!seen.contains(&"stolen".to_owned()));

    for bad in ["?limit=0", "?limit=101", "?page_token=bm90LW91cnM"] {
        let (status, body) = list(&s, bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    let r = http()
        .get(format!("{}/v1/tenants", s.issuer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the list is client-authenticated");
}
