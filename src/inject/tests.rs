use serde_json::{Value, json};

use super::*;

fn account(yaml: &str) -> ServiceAccount {
    serde_yaml::from_str(yaml).unwrap()
}

fn client_secret_account() -> ServiceAccount {
    account(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: worker, namespace: billing, generation: 1}
spec:
  audiences: ["https://orders.example.com"]
  authentication:
    clientSecret: {secretName: worker-credentials}
status:
  conditions:
    - {type: Ready, status: "True", reason: CredentialsIssued, message: ok, lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1}
"#,
    )
}

fn federated_account() -> ServiceAccount {
    account(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: ServiceAccount
metadata: {name: agent, namespace: shipping}
spec:
  audiences: ["https://orders.example.com"]
  authentication:
    federated:
      - issuerRef: {name: cluster}
        subject: system:serviceaccount:shipping:shipping-agent
"#,
    )
}

fn kubernetes_issuer() -> TrustedIssuer {
    serde_yaml::from_str(
        r#"
apiVersion: s2s.dev/v1alpha1
kind: TrustedIssuer
metadata: {name: cluster, namespace: shipping}
spec:
  kubernetes: {}
  audiences: ["s2s.dev"]
"#,
    )
    .unwrap()
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "worker-", "annotations": annotations},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate:1"}],
            "containers": [
                {"name": "app", "image": "app:1", "futureField": {"kept": true},
                 "env": [{"name": "A", "value": "1"}]},
                {"name": "second", "image": "app:1"},
            ],
        },
    })
}

fn config() -> Config {
    Config::new("s2s-operator:test", "https://s2s.example/oauth2/token")
}

fn apply(pod: &Value, ops: Vec<Value>) -> Value {
    let mut out = pod.clone();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops)).unwrap();
    json_patch::patch(&mut out, &patch).unwrap();
    out
}

fn injected(
    pod: &Value,
    ns: &str,
    acc: &ServiceAccount,
    issuers: &[&TrustedIssuer],
) -> (Value, Vec<String>) {
    match mutate(pod, ns, Some(acc), issuers, &config()) {
        Decision::Patch(ops, warnings) => (apply(pod, ops), warnings),
        other => panic!("not injected: {other:?}"),
    }
}

#[test]
fn a_pod_without_the_annotation_is_left_alone() {
    let p = pod(json!({"other": "x"}));
    assert_eq!(
        mutate(
            &p,
            "billing",
            Some(&client_secret_account()),
            &[],
            &config()
        ),
        Decision::Unchanged
    );
    let mut bare = p.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(
        mutate(&bare, "billing", None, &[], &config()),
        Decision::Unchanged
    );
}

#[test]
fn the_agent_becomes_the_first_native_sidecar_with_its_secret_tokens_and_env() {
    let p = pod(json!({INJECT: "worker", SCOPES: "orders:read orders:write"}));
    let (out, warnings) = injected(&p, "billing", &client_secret_account(), &[]);
    assert!(warnings.is_empty(), "{warnings:?}");
    let inits = out["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    let agent = &inits[0];
    assert_eq!(agent["name"], CONTAINER);
    assert_eq!(
        inits[1]["name"], "migrate",
        "the pod's own init container keeps its place after the agent"
    );
    assert_eq!(agent["restartPolicy"], "Always");
    assert_eq!(agent["image"], "s2s-operator:test");
    assert_eq!(
        agent["startupProbe"]["exec"]["command"],
        json!(["/s2s-operator", "probe", "http://127.0.0.1:9090/v1/ready"])
    );
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "agent",
            "--credentials",
            CREDENTIALS_PATH,
            "--listen",
            "127.0.0.1:9090",
            "--token-dir",
            TOKENS_PATH,
            "--audience",
            "https://orders.example.com",
            "--scope",
            "orders:read",
            "--scope",
            "orders:write"
        ]
    );
    let sc = &agent["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        agent["volumeMounts"],
        json!([
            {"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_PATH, "readOnly": true},
            {"name": TOKENS_VOLUME, "mountPath": TOKENS_PATH},
        ])
    );
    assert_eq!(
        out["spec"]["volumes"],
        json!([
            {"name": CREDENTIALS_VOLUME, "secret": {"secretName": "worker-credentials", "defaultMode": 0o444}},
            {"name": TOKENS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        ])
    );
    for c in out["spec"]["containers"].as_array().unwrap() {
        let env = c["env"].as_array().unwrap();
        assert!(env.contains(&json!({"name": "S2S_AGENT_URL", "value": "http://127.0.0.1:9090"})));
        assert!(
            c["volumeMounts"].as_array().unwrap().contains(
                &json!({"name": TOKENS_VOLUME, "mountPath": TOKENS_PATH, "readOnly": true})
            )
        );
        assert!(c.get("restartPolicy").is_none());
    }
    assert_eq!(
        out["spec"]["containers"][0]["env"][0],
        json!({"name": "A", "value": "1"})
    );
    assert_eq!(
        out["spec"]["containers"][0]["futureField"],
        json!({"kept": true}),
        "fields we do not know survive"
    );
    assert_eq!(out["metadata"]["annotations"][INJECTED], "worker");

    // Admitted again (a re-invocation, or the Pod's spec copied into a new one): unchanged.
    assert_eq!(
        mutate(
            &out,
            "billing",
            Some(&client_secret_account()),
            &[],
            &config()
        ),
        Decision::Unchanged
    );
    let mut copied = out.clone();
    copied["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove(INJECTED);
    assert_eq!(
        mutate(
            &copied,
            "billing",
            Some(&client_secret_account()),
            &[],
            &config()
        ),
        Decision::Unchanged,
        "an s2s-agent container is never added twice"
    );
}

#[test]
fn annotations_set_port_audience_token_files_and_resources() {
    let p = pod(json!({
        INJECT: "worker", PORT: "9191", AUDIENCE: "https://billing.example.com",
        TOKENS: "orders=https://orders.example.com,orders:read", MEMORY_LIMIT: "128Mi", CPU_REQUEST: "50m",
    }));
    let (out, _) = injected(&p, "billing", &client_secret_account(), &[]);
    let agent = &out["spec"]["initContainers"][0];
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(args.windows(2).any(|w| w == ["--listen", "127.0.0.1:9191"]));
    assert!(
        args.windows(2)
            .any(|w| w == ["--audience", "https://billing.example.com"])
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--token", "orders=https://orders.example.com,orders:read"])
    );
    assert_eq!(agent["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(agent["resources"]["requests"]["cpu"], "50m");
    assert_eq!(agent["resources"]["requests"]["memory"], "16Mi");
    assert_eq!(
        out["spec"]["containers"][1]["env"][0]["value"],
        "http://127.0.0.1:9191"
    );
}

#[test]
fn what_cannot_work_is_refused_with_what_to_do() {
    let deny =
        |p: &Value, acc: Option<&ServiceAccount>| match mutate(p, "billing", acc, &[], &config()) {
            Decision::Deny(m) => m,
            other => panic!("admitted: {other:?}"),
        };
    let m = deny(&pod(json!({INJECT: "nobody"})), None);
    assert!(
        m.contains("no s2s.dev ServiceAccount billing/nobody") && m.contains("kubectl get s2ssa"),
        "{m}"
    );
    let acc = client_secret_account();
    assert!(deny(&pod(json!({INJECT: "worker", PORT: "http"})), Some(&acc)).contains(PORT));
    assert!(deny(&pod(json!({INJECT: "worker", PORT: "0"})), Some(&acc)).contains(PORT));
    assert!(
        deny(
            &pod(json!({INJECT: "worker", MEMORY_LIMIT: "lots"})),
            Some(&acc)
        )
        .contains("quantity")
    );
    assert!(
        deny(
            &pod(json!({INJECT: "worker", TOKENS: "no-equals-sign"})),
            Some(&acc)
        )
        .contains(TOKENS)
    );
    let mut taken = pod(json!({INJECT: "worker"}));
    taken["spec"]["containers"][0]["ports"] = json!([{"containerPort": 9090}]);
    assert!(deny(&taken, Some(&acc)).contains("9090"));
    let mut vol = pod(json!({INJECT: "worker"}));
    vol["spec"]["volumes"] = json!([{"name": TOKENS_VOLUME, "emptyDir": {}}]);
    assert!(deny(&vol, Some(&acc)).contains(TOKENS_VOLUME));
    let api_only = account(
        "apiVersion: s2s.dev/v1alpha1\nkind: ServiceAccount\nmetadata: {name: api, namespace: billing}\nspec:\n  api: {audience: https://billing.example.com}\n",
    );
    assert!(
        deny(&pod(json!({INJECT: "api"})), Some(&api_only))
            .contains("nothing to authenticate with")
    );
}

#[test]
fn an_account_not_ready_yet_is_injected_with_a_warning() {
    let mut acc = client_secret_account();
    acc.status = None;
    let (out, warnings) = injected(&pod(json!({INJECT: "worker"})), "billing", &acc, &[]);
    assert_eq!(out["spec"]["initContainers"][0]["name"], CONTAINER);
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("not Ready"), "{warnings:?}");
    acc.spec.disabled = true;
    let (_, warnings) = injected(&pod(json!({INJECT: "worker"})), "billing", &acc, &[]);
    assert!(warnings[0].contains("disabled"), "{warnings:?}");
}

#[test]
fn a_federated_account_gets_a_projected_token_for_its_kubernetes_issuer() {
    let issuer = kubernetes_issuer();
    let mut p = pod(json!({INJECT: "agent"}));
    p["spec"]["serviceAccountName"] = json!("shipping-agent");
    let (out, _) = injected(&p, "shipping", &federated_account(), &[&issuer]);
    let vols = out["spec"]["volumes"].as_array().unwrap();
    assert_eq!(
        vols[0],
        json!({"name": PROJECTED_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": "s2s.dev", "expirationSeconds": 3600, "path": PROJECTED_VOLUME}}]}})
    );
    let args: Vec<&str> = out["spec"]["initContainers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--projected-token", "/var/run/secrets/tokens/s2s-token"])
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--token-url", "https://s2s.example/oauth2/token"])
    );
    assert!(!args.contains(&"--credentials"));

    // Running as another Kubernetes service account, nothing matches: refused.
    p["spec"]["serviceAccountName"] = json!("default");
    match mutate(
        &p,
        "shipping",
        Some(&federated_account()),
        &[&issuer],
        &config(),
    ) {
        Decision::Deny(m) => assert!(m.contains("system:serviceaccount:shipping:default"), "{m}"),
        other => panic!("{other:?}"),
    }
    // No `kubernetes` issuer of that name: refused.
    p["spec"]["serviceAccountName"] = json!("shipping-agent");
    assert!(matches!(
        mutate(&p, "shipping", Some(&federated_account()), &[], &config()),
        Decision::Deny(_)
    ));
}

#[test]
fn quantities_are_checked_as_people_write_them() {
    for ok in ["10m", "64Mi", "1", "0.5", "2Gi", "100k"] {
        assert!(is_quantity(ok), "{ok}");
    }
    for bad in ["", "m", "1.2.3", ".5", "5.", "10 m", "64MB", "-1"] {
        assert!(!is_quantity(bad), "{bad}");
    }
}
