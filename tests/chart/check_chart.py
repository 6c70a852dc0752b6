#!/usr/bin/env python3
"""Lints and renders charts/s2s-operator with real Helm, and checks what it renders.

Helm v4 comes as a library (helm-python-sdk, import name helm_python), so no helm binary is
needed; Kubernetes object schemas come from kubernetes-validate. `.ci/run` installs both
into target/ci-venv and runs this script; tests/chart.rs runs it from `cargo test` when
they are importable.

What it checks, for the default values and every documented combination:
  * `helm lint --strict` finds nothing above "info";
  * values.schema.json accepts the values (and refuses an unknown key);
  * every rendered object is valid against the Kubernetes schemas of KUBE_VERSION
    (strict: unknown fields fail), except ServiceMonitor, a CRD kind those schemas lack;
  * every container is hardened (non-root 65532, read-only root, no privilege escalation,
    all capabilities dropped, RuntimeDefault seccomp) and the two identities stay apart;
  * the layout each combination promises (ports, issuer, TLS flags and Secrets, the
    injection webhook and its Service, HPA, PDBs, ...).
Once: the chart's crds/ equal the repository's crds/ byte for byte; values.yaml,
values.schema.json and the README's configuration table list the same keys (and the
table's defaults are values.yaml's); rbac.yaml and serviceaccounts.yaml stay renderable by
plain string replacement, as the Rust tests render them; every flag the chart passes is one
the README documents; refused combinations fail to render; the test node's image
(tests/cluster/run) has the Dockerfile's binary path, user and entrypoint.
"""

from __future__ import annotations

import copy
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Callable

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - reported to the caller
    print(f"missing Python package: {exc.name} (pip install helm-python-sdk kubernetes-validate)")
    sys.exit(3)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "s2s-operator"
RELEASE = "s2s"
NAMESPACE = "s2s-system"
# The Kubernetes version the chart targets (k8s-openapi's feature in Cargo.toml).
KUBE_VERSION = "1.33"
# CRD kinds the Kubernetes schemas do not have; checked structurally below instead.
UNVALIDATED_KINDS = {"ServiceMonitor"}
# Objects without a namespace.
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
# A base64 PEM, as webhook.caBundle takes it (the content is not parsed by the chart).
CA_BUNDLE = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="
# What tls.mode=none needs alongside: the webhook is HTTPS only.
PLAIN = {"tls": {"mode": "none"}, "webhook": {"enabled": False}}

# The documented combinations (README "Configuration"), each with checks of its own.
COMBINATIONS: dict[str, dict[str, Any]] = {
    # tls.mode operator and the webhook, in the separate-Deployments layout.
    "defaults": {},
    "tls-operator+options": {
        "tls": {"caLifetime": "17520h", "certificateLifetime": "720h", "propagation": "10m",
                "extraNames": ["auth.example.com", "10.0.0.5"]},
    },
    "tls-secret": {"tls": {"mode": "secret"}, "webhook": {"caBundle": CA_BUNDLE}},
    "tls-secret+cainjector": {
        "tls": {"mode": "secret"},
        "webhook": {"annotations": {"cert-manager.io/inject-ca-from": "s2s-system/s2s-webhook"}},
    },
    "tls-none": PLAIN,
    "webhook-off": {"webhook": {"enabled": False}},
    "webhook-url": {"webhook": {"url": {"host": "127.0.0.1:9443"}}, "hostNetwork": True,
                    "listenAddress": "127.0.0.1"},
    "webhook-options": {
        "webhook": {
            "failurePolicy": "Ignore",
            "timeoutSeconds": 10,
            "excludeNamespaces": ["kube-system", "istio-system", "s2s-system"],
            "namespaceSelector": {
                "matchLabels": {"s2s.dev/inject": "enabled"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}],
            },
            "caBundle": CA_BUNDLE,
            "port": 9444,
        },
    },
    "sidecar": {"tokenServer": {"sidecar": True}, **PLAIN},
    "sidecar+webhook": {"tokenServer": {"sidecar": True}},
    "sidecar+tls-secret": {"tokenServer": {"sidecar": True}, "tls": {"mode": "secret"},
                           "webhook": {"caBundle": CA_BUNDLE}},
    "sidecar+webhook-off": {"tokenServer": {"sidecar": True}, "webhook": {"enabled": False}},
    "hpa": {"tokenServer": {"autoscaling": {"enabled": True, "maxReplicas": 6}}},
    "token-server-replicas": {"tokenServer": {"replicas": 3}, "controller": {"replicas": 2}},
    "network-policy": {"networkPolicy": {"enabled": True}},
    "network-policy+tls-none": {"networkPolicy": {"enabled": True}, **PLAIN},
    "network-policy+sidecar+cidrs": {
        "tokenServer": {"sidecar": True},
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.0.0.1/32"]},
            "issuerEgressCidrs": ["0.0.0.0/0"],
        },
    },
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "service-monitor+tls": {
        "serviceMonitor": {"enabled": True, "tokenServerTlsConfig": {"insecureSkipVerify": True}},
        "tls": {"mode": "secret"},
        "webhook": {"enabled": False},
    },
    "service-monitor+tls-none": {"serviceMonitor": {"enabled": True}, **PLAIN},
    "everything": {
        "image": {"tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "issuer": "https://auth.example.com",
        "signingAlgorithm": "EdDSA",
        "allowUnclaimedAudiences": True,
        "tls": {"mode": "secret"},
        "webhook": {"annotations": {"cert-manager.io/inject-ca-from": "s2s-system/s2s-webhook"},
                    "failurePolicy": "Ignore"},
        "tokenServer": {
            "service": {"type": "LoadBalancer", "annotations": {"a": "b"}},
            "autoscaling": {"enabled": True},
        },
        "podDisruptionBudget": {"maxUnavailable": "50%"},
        "networkPolicy": {"enabled": True},
        "serviceMonitor": {"enabled": True},
        "podAnnotations": {"x": "y"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "affinity": {"podAntiAffinity": {}},
    },
    "pdb-off": {"podDisruptionBudget": {"enabled": False}},
    # A cluster without a Pod network (the test node of tests/cluster/run).
    "host-network": {"hostNetwork": True},
    "host-network+loopback": {
        "hostNetwork": True,
        "listenAddress": "127.0.0.1",
        "extraEnv": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                     {"name": "KUBERNETES_SERVICE_PORT", "value": "6443"}],
        "tokenServer": {"replicas": 1},
    },
    "listen-ipv6": {"listenAddress": "::1", "tokenServer": {"sidecar": True}},
    "text-logs": {"logFormat": "text", **PLAIN},
}

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    if not cond:
        failures.append(what)


def merged(overrides: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and v:
            out[k] = merged(v, out[k])
        else:
            out[k] = v
    return out


def render(chart: Any, values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__source"] = path
                objects.append(doc)
    return objects, notes


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def kube_validate(name: str, obj: dict[str, Any]) -> None:
    body = {k: v for k, v in obj.items() if k != "__source"}
    if obj["kind"] in UNVALIDATED_KINDS:
        return
    try:
        kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        failures.append(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError as e:
        failures.append(f"{name}: no schema for {obj['kind']} {obj['apiVersion']}: {e.message}")


HARDENED = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
}


def check_hardening(name: str, deploy: dict[str, Any], host_network: bool) -> None:
    pod = deploy["spec"]["template"]["spec"]
    where = f"{name}: Deployment/{deploy['metadata']['name']}"
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp")
    # The node's network only when asked for (hostNetwork), then with the matching DNS policy.
    check(pod.get("hostNetwork", False) is host_network, f"{where}: hostNetwork is {host_network}")
    check(pod.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host_network else None), f"{where}: dnsPolicy")
    # On the node's ports a surge Pod cannot be scheduled beside the old one.
    want_strategy = ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
                     if host_network else None)
    check(deploy["spec"].get("strategy") == want_strategy, f"{where}: strategy {want_strategy}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        for key, want in HARDENED.items():
            check(sc.get(key) == want, f"{where}: container {c['name']}: {key} != {want}")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: {c['name']}: drop ALL")
        check(not sc.get("capabilities", {}).get("add"), f"{where}: {c['name']}: adds capabilities")
        check(sc.get("privileged") is not True, f"{where}: {c['name']}: privileged")
        check(
            sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: {c['name']}: seccompProfile RuntimeDefault",
        )
        check("resources" in c and c["resources"].get("requests"), f"{where}: {c['name']}: resources")
        env = {e["name"]: e for e in c.get("env", [])}
        for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
            got = env.get(var, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            check(got == field, f"{where}: {c['name']}: {var} from {field}")


def containers(deploy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}


def arg(container: dict[str, Any], flag: str) -> str | None:
    for a in container["args"]:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def check_layout(name: str, values: dict[str, Any], objects: list[dict[str, Any]], notes: str) -> None:
    ts = values["tokenServer"]
    mode = values["tls"]["mode"]
    tls = mode != "none"
    webhook = values["webhook"]["enabled"]
    sidecar = ts["sidecar"]
    deploys = by_kind(objects, "Deployment")
    ctrl = deploys.get(f"{RELEASE}-controller")
    check(ctrl is not None, f"{name}: controller Deployment")
    if ctrl is None:
        return
    for d in deploys.values():
        check_hardening(name, d, values["hostNetwork"])
        # Log shippers get JSON lines from every container unless told otherwise.
        for c in d["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            check(
                env.get("S2S_LOG_FORMAT") == values["logFormat"],
                f"{name}: {c['name']}: S2S_LOG_FORMAT is logFormat ({values['logFormat']})",
            )

    # Identities: the token server runs as <release>-token-server unless it is a sidecar.
    check(
        ctrl["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-controller",
        f"{name}: controller identity",
    )
    check(ctrl["spec"]["replicas"] == values["controller"]["replicas"], f"{name}: controller replicas")
    if sidecar:
        check(set(containers(ctrl)) == {"controller", "token-server"}, f"{name}: sidecar containers")
        check(f"{RELEASE}-token-server" not in deploys, f"{name}: no token-server Deployment")
        server = containers(ctrl)["token-server"]
        server_pod = ctrl
    else:
        check(set(containers(ctrl)) == {"controller"}, f"{name}: controller Pod runs only the controller")
        tsd = deploys.get(f"{RELEASE}-token-server")
        check(tsd is not None, f"{name}: token-server Deployment")
        if tsd is None:
            return
        spec = tsd["spec"]["template"]["spec"]
        check(spec["serviceAccountName"] == f"{RELEASE}-token-server", f"{name}: token-server identity")
        if ts["autoscaling"]["enabled"]:
            check("replicas" not in tsd["spec"], f"{name}: HPA owns replicas")
        else:
            check(tsd["spec"]["replicas"] == ts["replicas"], f"{name}: token-server replicas")
        server = containers(tsd)["token-server"]
        server_pod = tsd

    controller = containers(ctrl)["controller"]
    check(controller["args"][0] == "controller", f"{name}: controller mode")
    check(server["args"][0] == "token-server", f"{name}: token-server mode")
    for c, port in ((controller, "metrics"), (server, "https" if tls else "http")):
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            check(get.get("path") == path and get.get("port") == port, f"{name}: {c['name']} {probe}")
    check(controller["ports"][0]["containerPort"] == 8081, f"{name}: controller health port 8081")
    # Every process listens on listenAddress; the probes ask that address when it is one.
    addr = values["listenAddress"]
    listen = (lambda port: f"[{addr}]:{port}") if ":" in addr else (lambda port: f"{addr}:{port}")
    probe_host = None if addr in ("0.0.0.0", "::") else addr
    check(arg(controller, "--health-listen") == listen(8081), f"{name}: --health-listen {listen(8081)}")
    for c in (controller, server):
        for probe in ("livenessProbe", "readinessProbe"):
            check(c[probe]["httpGet"].get("host") == probe_host, f"{name}: {c['name']} {probe} host {probe_host}")
        env = [e["name"] for e in c["env"]]
        extra = [e["name"] for e in values["extraEnv"]]
        check(env[len(env) - len(extra):] == extra and len(set(env)) == len(env),
              f"{name}: {c['name']}: extraEnv last, no name twice")

    want_issuer = values["issuer"] or (
        f"{'https' if tls else 'http'}://{RELEASE}-token-server.{NAMESPACE}.svc"
    )
    for c in (controller, server):
        check(arg(c, "--issuer") == want_issuer, f"{name}: {c['name']} --issuer {want_issuer}")
        check(arg(c, "--max-token-lifetime") == values["maxTokenLifetime"], f"{name}: lifetime")
    check(arg(controller, "--signing-algorithm") == values["signingAlgorithm"], f"{name}: algorithm")
    check(arg(controller, "--key-rotation") == values["keyRotation"], f"{name}: key rotation")
    port = 8443 if tls else 8080
    check(arg(server, "--listen") == listen(port), f"{name}: token server listens on {listen(port)}")
    check(server["ports"][0]["containerPort"] == port, f"{name}: token server containerPort")
    check(
        ("--allow-unclaimed-audiences" in server["args"]) == values["allowUnclaimedAudiences"],
        f"{name}: --allow-unclaimed-audiences",
    )
    # TLS comes from Secrets the token server watches; nothing is mounted.
    for d in deploys.values():
        pod = d["spec"]["template"]["spec"]
        check(not pod.get("volumes"), f"{name}: {d['metadata']['name']}: no volumes")
        for c in pod["containers"]:
            check(not c.get("volumeMounts"), f"{name}: {c['name']}: no volume mounts")
    for old in ("--tls-cert", "--tls-key"):
        check(arg(server, old) is None, f"{name}: no {old} (files): TLS comes from a Secret")
    svc_dns = f"{RELEASE}-token-server.{NAMESPACE}.svc"
    webhook_dns = f"{RELEASE}-webhook.{NAMESPACE}.svc"
    certificates = [a.split("=", 1)[1] for a in controller["args"] if a.startswith("--tls-certificate=")]
    if mode == "operator":
        check(arg(controller, "--tls-ca-secret") == f"{RELEASE}-ca", f"{name}: --tls-ca-secret")
        want = [f"{RELEASE}-token-server-tls=" + ",".join(
            [svc_dns, f"{svc_dns}.cluster.local", *values["tls"]["extraNames"]])]
        if webhook:
            # webhook.url.host's host (without the port) is a name of the webhook's certificate.
            host = values["webhook"]["url"]["host"]
            names = [webhook_dns] + ([urllib.parse.urlsplit(f"https://{host}").hostname] if host else [])
            want.append(f"{RELEASE}-webhook-tls=" + ",".join(names))
        check(certificates == want, f"{name}: --tls-certificate {want}, got {certificates}")
        check(arg(controller, "--webhook-configuration") == (f"{RELEASE}-inject" if webhook else None),
              f"{name}: --webhook-configuration iff the webhook is on")
        for flag, key in (("--tls-ca-lifetime", "caLifetime"), ("--tls-cert-lifetime", "certificateLifetime"),
                          ("--tls-propagation", "propagation")):
            check(arg(controller, flag) == values["tls"][key], f"{name}: {flag} is tls.{key}")
    else:
        for flag in ("--tls-ca-secret", "--webhook-configuration", "--tls-ca-lifetime"):
            check(arg(controller, flag) is None, f"{name}: no {flag} in tls.mode {mode}")
        check(not certificates, f"{name}: no --tls-certificate in tls.mode {mode}")
    if tls:
        check(arg(server, "--tls-secret") == f"{RELEASE}-token-server-tls", f"{name}: --tls-secret")
        check("WARNING: the token server speaks plain HTTP" not in notes, f"{name}: no plain-HTTP warning")
        if mode == "operator":
            check("jsonpath='{.data.ca\\.crt}'" in notes and f"secret {RELEASE}-token-server-tls" in notes,
                  f"{name}: NOTES: the CA from the token-server-tls Secret")
    else:
        check(arg(server, "--tls-secret") is None, f"{name}: no TLS")
        check("WARNING: the token server speaks plain HTTP" in notes, f"{name}: plain-HTTP warning")

    # The webhook: served by the token server, behind <release>-webhook, registered as
    # <release>-inject; all or nothing.
    server_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    webhook_svc = by_kind(objects, "Service").get(f"{RELEASE}-webhook")
    mwcs = by_kind(objects, "MutatingWebhookConfiguration")
    if webhook:
        wv = values["webhook"]
        check(server_ports.get("webhook") == wv["port"], f"{name}: token server webhook port {wv['port']}")
        check(arg(server, "--webhook-listen") == listen(wv["port"]), f"{name}: --webhook-listen")
        check(arg(server, "--webhook-tls-secret") == f"{RELEASE}-webhook-tls", f"{name}: --webhook-tls-secret")
        check(arg(server, "--agent-image") == server["image"], f"{name}: --agent-image is the operator image")
        check(arg(server, "--agent-image-pull-policy") == values["image"]["pullPolicy"],
              f"{name}: --agent-image-pull-policy")
        check("s2s.dev/inject" in notes, f"{name}: NOTES: injection")
        check(webhook_svc is not None, f"{name}: webhook Service")
        if webhook_svc is not None:
            p = webhook_svc["spec"]["ports"]
            check(len(p) == 1 and p[0]["port"] == 443 and p[0]["targetPort"] == "webhook",
                  f"{name}: webhook Service 443 -> webhook")
            labels = server_pod["spec"]["template"]["metadata"]["labels"]
            check(all(labels.get(k) == v for k, v in webhook_svc["spec"]["selector"].items()),
                  f"{name}: webhook Service selects the token-server Pods")
        check(set(mwcs) == {f"{RELEASE}-inject"}, f"{name}: MutatingWebhookConfiguration {RELEASE}-inject")
        for mwc in mwcs.values():
            hooks = mwc["webhooks"]
            check(len(hooks) == 1 and hooks[0]["name"] == "inject.s2s.dev", f"{name}: one webhook inject.s2s.dev")
            h = hooks[0]
            if wv["url"]["host"]:
                check(h["clientConfig"].get("url") == f"https://{wv['url']['host']}/inject"
                      and "service" not in h["clientConfig"], f"{name}: webhook clientConfig.url, no service")
            else:
                check(h["clientConfig"].get("service") == {"name": f"{RELEASE}-webhook", "namespace": NAMESPACE,
                                                           "path": "/inject", "port": 443}
                      and "url" not in h["clientConfig"], f"{name}: webhook clientConfig.service")
            check(h["clientConfig"].get("caBundle", "") == wv["caBundle"], f"{name}: caBundle is webhook.caBundle")
            check(h["failurePolicy"] == wv["failurePolicy"] and h["timeoutSeconds"] == wv["timeoutSeconds"],
                  f"{name}: failurePolicy, timeoutSeconds")
            check((h["sideEffects"], h["reinvocationPolicy"], h["matchPolicy"], h["admissionReviewVersions"])
                  == ("None", "Never", "Equivalent", ["v1"]), f"{name}: webhook fixed fields")
            check(h["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                  "resources": ["pods"], "scope": "Namespaced"}], f"{name}: rules: Pod CREATE")
            check(h.get("matchConditions") == [{
                "name": "asks-for-injection",
                "expression": "has(object.metadata.annotations) && 's2s.dev/inject' in object.metadata.annotations",
            }], f"{name}: matchConditions: annotated Pods only")
            sel = h["namespaceSelector"]
            exprs = sel.get("matchExpressions", [])
            notin = [e for e in exprs if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"]
            check(len(notin) == 1 and sorted(notin[0]["values"]) == sorted({NAMESPACE, *wv["excludeNamespaces"]}),
                  f"{name}: namespaceSelector excludes the release namespace and excludeNamespaces, once each")
            extra = wv["namespaceSelector"]
            check(sel.get("matchLabels", {}) == extra.get("matchLabels", {}), f"{name}: namespaceSelector matchLabels")
            check([e for e in exprs if e not in notin] == extra.get("matchExpressions", []),
                  f"{name}: namespaceSelector matchExpressions merged")
            for k, v in wv["annotations"].items():
                check(mwc["metadata"].get("annotations", {}).get(k) == v, f"{name}: webhook annotation {k}")
    else:
        check("webhook" not in server_ports, f"{name}: no webhook port")
        for flag in ("--webhook-listen", "--webhook-tls-secret", "--agent-image"):
            check(arg(server, flag) is None, f"{name}: no {flag}")
        check(webhook_svc is None, f"{name}: no webhook Service")
        check(not mwcs, f"{name}: no MutatingWebhookConfiguration")
    check("/oauth2/token" in notes and "kubectl apply" in notes, f"{name}: NOTES: first token")

    # The token Service points at whichever Pods run the token server.
    svc = by_kind(objects, "Service").get(f"{RELEASE}-token-server")
    check(svc is not None, f"{name}: token Service")
    if svc is not None:
        p = svc["spec"]["ports"][0]
        check(p["port"] == (443 if tls else 80) and p["targetPort"] == ("https" if tls else "http"),
              f"{name}: token Service port")
        component = "controller" if sidecar else "token-server"
        check(svc["spec"]["selector"].get("app.kubernetes.io/component") == component,
              f"{name}: token Service selects the {component} Pods")
        labels = server_pod["spec"]["template"]["metadata"]["labels"]
        check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
              f"{name}: token Service selector matches the Pods")

    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    if ts["autoscaling"]["enabled"] and not sidecar:
        hpa = hpas.get(f"{RELEASE}-token-server")
        check(hpa is not None and hpa["apiVersion"] == "autoscaling/v2", f"{name}: HPA autoscaling/v2")
        if hpa:
            check(hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-token-server", f"{name}: HPA target")
            check(hpa["spec"]["maxReplicas"] == ts["autoscaling"]["maxReplicas"], f"{name}: HPA max")
    else:
        check(not hpas, f"{name}: no HPA")

    pdbs = by_kind(objects, "PodDisruptionBudget")
    if values["podDisruptionBudget"]["enabled"]:
        want = {f"{RELEASE}-controller"} | (set() if sidecar else {f"{RELEASE}-token-server"})
        check(set(pdbs) == want, f"{name}: PDBs {sorted(want)}, got {sorted(pdbs)}")
        for pdb in pdbs.values():
            sel = pdb["spec"]["selector"]["matchLabels"]
            check(any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                      for d in deploys.values()), f"{name}: PDB {pdb['metadata']['name']} selects Pods")
    else:
        check(not pdbs, f"{name}: no PDB")

    nps = by_kind(objects, "NetworkPolicy")
    if values["networkPolicy"]["enabled"]:
        check(len(nps) == (1 if sidecar else 2), f"{name}: one NetworkPolicy per Deployment")
        for np in nps.values():
            spec = np["spec"]
            check(spec["policyTypes"] == ["Ingress", "Egress"], f"{name}: policy types")
            egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
            for need in ((53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")):
                check(need in egress_ports, f"{name}: {np['metadata']['name']} egress {need}")
            ingress_ports = {p["port"] for rule in spec["ingress"] for p in rule["ports"]}
            serves = np["metadata"]["name"].endswith("token-server") or sidecar
            if serves:
                check(port in ingress_ports, f"{name}: {np['metadata']['name']} ingress on {port}")
                if webhook:
                    wp = values["webhook"]["port"]
                    open_rules = [r for r in spec["ingress"] if not r.get("from")
                                  and any(p["port"] == wp for p in r["ports"])]
                    check(bool(open_rules), f"{name}: {np['metadata']['name']} webhook port {wp} open to the API server")
            check(webhook or values["webhook"]["port"] not in ingress_ports, f"{name}: no webhook ingress")
            if np["metadata"]["name"].endswith("controller"):
                check(8081 in ingress_ports, f"{name}: controller metrics ingress")
    else:
        check(not nps, f"{name}: no NetworkPolicy")

    sms = by_kind(objects, "ServiceMonitor")
    if values["serviceMonitor"]["enabled"]:
        check(len(sms) == 2, f"{name}: two ServiceMonitors")
        for sm in sms.values():
            check(sm["apiVersion"] == "monitoring.coreos.com/v1", f"{name}: ServiceMonitor apiVersion")
            for k, v in values["serviceMonitor"]["labels"].items():
                check(sm["metadata"]["labels"].get(k) == v, f"{name}: ServiceMonitor label {k}")
            sel = sm["spec"]["selector"]["matchLabels"]
            matched = [s for s in by_kind(objects, "Service").values()
                       if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            check(len(matched) == 1, f"{name}: ServiceMonitor {sm['metadata']['name']} selects one Service")
            if matched:
                names = {p["name"] for p in matched[0]["spec"]["ports"]}
                for ep in sm["spec"]["endpoints"]:
                    check(ep["port"] in names, f"{name}: ServiceMonitor port {ep['port']}")
                    check(ep["path"] == "/metrics", f"{name}: ServiceMonitor path")
    else:
        check(not sms, f"{name}: no ServiceMonitor")

    for o in objects:
        if o["kind"] not in CLUSTER_KINDS:
            check(o["metadata"].get("namespace") == NAMESPACE,
                  f"{name}: {o['kind']}/{o['metadata']['name']} in the release namespace")
        else:
            check("namespace" not in o["metadata"], f"{name}: {o['kind']}/{o['metadata']['name']} has no namespace")


def leaf_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> set[str]:
    """Key paths of values.yaml: a dict is walked into when its schema lists properties."""
    out: set[str] = set()
    props = schema.get("properties", {})
    for k, v in values.items():
        path = f"{prefix}{k}"
        sub = props.get(k)
        if sub is None:
            failures.append(f"values.yaml key {path} is not in values.schema.json")
            continue
        if isinstance(v, dict) and "properties" in sub:
            out |= leaf_paths(v, sub, path + ".")
        else:
            out.add(path)
    return out


def schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, sub in schema.get("properties", {}).items():
        if "properties" in sub:
            out |= schema_paths(sub, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def lookup(values: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        values = values[part]
    return values


def readme_table(readme: str) -> dict[str, str]:
    """`key` -> default cell of the README's configuration table."""
    section = readme.split("### Configuration", 1)
    check(len(section) == 2, "README has a '### Configuration' section")
    if len(section) < 2:
        return {}
    rows: dict[str, str] = {}
    for line in section[1].splitlines():
        if line.startswith("#"):
            break
        m = re.match(r"^\|\s*`([A-Za-z0-9_.]+)`\s*\|\s*(.*?)\s*\|", line)
        if m:
            check(m.group(1) not in rows, f"README table lists {m.group(1)} twice")
            rows[m.group(1)] = m.group(2)
    return rows


def check_keys(defaults: dict[str, Any], schema: dict[str, Any]) -> None:
    check(schema.get("$schema") == "http://json-schema.org/draft-07/schema#", "schema is draft-07")
    check(schema.get("additionalProperties") is False, "schema: additionalProperties false at the top")
    in_values = leaf_paths(defaults, schema)
    in_schema = schema_paths(schema)
    table = readme_table((ROOT / "README.md").read_text())
    for path in sorted(in_schema - in_values):
        failures.append(f"values.schema.json key {path} is not in values.yaml")
    for path in sorted(in_values - set(table)):
        failures.append(f"values.yaml key {path} is not in the README configuration table")
    for path in sorted(set(table) - in_values):
        failures.append(f"README configuration table key {path} is not in values.yaml")
    for path in sorted(in_values & set(table)):
        cell = table[path]
        m = re.fullmatch(r"`(.*)`", cell)
        if not m:
            failures.append(f"README default of {path} is not a `code` cell: {cell}")
            continue
        try:
            documented = yaml.safe_load(m.group(1)) if m.group(1) != '""' else ""
        except yaml.YAMLError:
            documented = m.group(1)
        if documented != lookup(defaults, path):
            failures.append(f"README default of {path} is {cell}, values.yaml has {lookup(defaults, path)!r}")


def check_crds(chart: Any) -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    ours = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    check(repo == ours and repo, f"chart crds/ {ours} == repository crds/ {repo}")
    for n in set(repo) & set(ours):
        check((ROOT / "crds" / n).read_bytes() == (CHART / "crds" / n).read_bytes(),
              f"charts/s2s-operator/crds/{n} differs from crds/{n}")
    loaded = {Path(c["filename"]).name for c in chart.crds}
    check(loaded == set(repo), f"Helm loads the CRDs {sorted(loaded)}")


def check_plain_templates(chart: Any, default_objects: list[dict[str, Any]]) -> None:
    """rbac.yaml and serviceaccounts.yaml: the Rust tests render them by string replacement."""
    for name in ("rbac.yaml", "serviceaccounts.yaml"):
        text = (CHART / "templates" / name).read_text()
        exprs = set(re.findall(r"\{\{.*?\}\}", text, re.S))
        check(exprs <= {"{{ .Release.Name }}", "{{ .Release.Namespace }}"},
              f"templates/{name} has template expressions beyond the release name and namespace: {exprs}")
        plain = text.replace("{{ .Release.Name }}", RELEASE).replace("{{ .Release.Namespace }}", NAMESPACE)
        plain_objs = [d for d in yaml.safe_load_all(plain) if d]
        helm_objs = [{k: v for k, v in o.items() if k != "__source"}
                     for o in default_objects if o["__source"].endswith("/" + name)]
        check(plain_objs == helm_objs, f"templates/{name}: string replacement renders what Helm renders")


def check_flags_documented(objects: list[dict[str, Any]]) -> None:
    """Every flag any combination passes (objects of all of them)."""
    readme = (ROOT / "README.md").read_text()
    flags = {(c["name"], a.split("=", 1)[0])
             for d in objects if d["kind"] == "Deployment"
             for c in d["spec"]["template"]["spec"]["containers"] for a in c["args"][1:]}
    for container, flag in sorted(flags):
        check(f"`{flag}`" in readme, f"{container}: flag {flag} is not in the README's flag table")


def check_refusals(chart: Any) -> None:
    def refused(values: dict[str, Any], what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except helm.HelmError:
            return
        failures.append(f"not refused: {what}")

    refused({}, "an unknown top-level key", lambda: chart.validate_schema({"replicaCount": 3}))
    refused({}, "an unknown nested key", lambda: chart.validate_schema({"tokenServer": {"tsl": {}}}))
    refused({}, "a bad algorithm", lambda: chart.validate_schema({"signingAlgorithm": "HS256"}))
    refused({}, "a bad duration", lambda: chart.validate_schema({"keyRotation": "30 days"}))
    refused({}, "sidecar with autoscaling", lambda: chart.render(
        {"tokenServer": {"sidecar": True, "autoscaling": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE))
    refused({}, "a bad tls.mode", lambda: chart.validate_schema({"tls": {"mode": "cert-manager"}}))
    refused({}, "the old tokenServer.tls", lambda: chart.validate_schema({"tokenServer": {"tls": {"secretName": "x"}}}))
    refused({}, "a webhook.url.host with a scheme or path",
            lambda: chart.validate_schema({"webhook": {"url": {"host": "https://hooks.example.com/inject"}}}))
    refused({}, "a bad webhook.failurePolicy", lambda: chart.validate_schema({"webhook": {"failurePolicy": "fail"}}))
    refused({}, "an unknown namespaceSelector key", lambda: chart.validate_schema(
        {"webhook": {"namespaceSelector": {"matchLabel": {"a": "b"}}}}))
    refused({}, "a webhook.caBundle that is not base64", lambda: chart.validate_schema(
        {"webhook": {"caBundle": "-----BEGIN CERTIFICATE-----"}}))
    refused({}, "the webhook port on the token port", lambda: chart.render(
        {"webhook": {"port": 8443}}, name=RELEASE, namespace=NAMESPACE))
    # The webhook is HTTPS only: tls.mode none with the webhook on must fail, and say why.
    try:
        chart.render({"tls": {"mode": "none"}}, name=RELEASE, namespace=NAMESPACE)
        failures.append("not refused: tls.mode none with webhook.enabled")
    except helm.HelmError as e:
        check("webhook.enabled needs TLS" in str(e), f"tls.mode none + webhook: unclear message: {e}")


def check_test_image() -> None:
    """The image tests/cluster/run builds for the test node is laid out as the Dockerfile's
    final stage: the binary at the same path, the same user, the same entrypoint."""
    docker = (CHART / "image" / "Dockerfile").read_text()
    final = docker[docker.rindex("\nFROM "):]
    copy_to = re.findall(r"^COPY --from=build \S+ (\S+)$", final, re.M)
    user = re.findall(r"^USER (\S+)$", final, re.M)
    entrypoint = re.findall(r"^ENTRYPOINT \[\"([^\"]+)\"\]$", final, re.M)
    check(len(copy_to) == 1 and len(user) == 1 and len(entrypoint) == 1,
          "Dockerfile: one COPY --from=build, USER and exec-form ENTRYPOINT in the final stage")
    script = (ROOT / "tests" / "cluster" / "run").read_text()
    got = dict(re.findall(r"^(image_binary|image_user|image_entrypoint)=(\S+)$", script, re.M))
    want = {"image_binary": copy_to[:1], "image_user": user[:1], "image_entrypoint": entrypoint[:1]}
    for key, value in want.items():
        check([got.get(key)] == value,
              f"tests/cluster/run {key}={got.get(key)} but the Dockerfile has {value}")
    # The script must really use them (not just define them).
    check('binary_image "$node_image" "${CARGO_TARGET_DIR:-$root/target}/debug/s2s-operator" \\\n'
          '    "$image_binary" "$image_entrypoint" "$released_image"' in script
          and 'oci_image "$ref" "$files" "$entrypoint" "$image_user"' in script,
          "tests/cluster/run builds the image from image_*")


def main() -> int:
    print(f"helm SDK {helm.helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}, "
          f"Kubernetes {KUBE_VERSION} schemas")
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
        schema = chart.schema or {}
        check(bool(schema), "the chart has values.schema.json")
        check_keys(defaults, schema)
        check_crds(chart)
        check_refusals(chart)
        default_objects: list[dict[str, Any]] = []
        all_objects: list[dict[str, Any]] = []
        for name, overrides in COMBINATIONS.items():
            before = len(failures)
            report = helm.lint(CHART, overrides, strict=True, namespace=NAMESPACE)
            for msg in report.get("messages", []):
                # Severity 1 is "info" (e.g. "icon is recommended"); warnings fail under strict.
                if msg["severity"] > 1:
                    failures.append(f"{name}: helm lint: {msg['path']}: {msg['error']}")
            for err in report.get("errors", []):
                failures.append(f"{name}: helm lint: {err}")
            try:
                chart.validate_schema(overrides)
            except helm.HelmError as e:
                failures.append(f"{name}: values.schema.json refuses the values: {e}")
            try:
                objects, notes = render(chart, overrides)
            except helm.HelmError as e:
                failures.append(f"{name}: render: {e}")
                continue
            if name == "defaults":
                default_objects = objects
            all_objects += objects
            for o in objects:
                kube_validate(name, o)
            check_layout(name, merged(overrides, defaults), objects, notes)
            kinds = sorted({o["kind"] for o in objects})
            status = "ok" if len(failures) == before else "FAILED"
            print(f"{status:6} {name}: {len(objects)} objects ({', '.join(kinds)})")
        check_plain_templates(chart, default_objects)
        check_flags_documented(all_objects)
        check_test_image()
        print(f"note: {', '.join(sorted(UNVALIDATED_KINDS))} is a CRD kind without a Kubernetes "
              "schema here; checked structurally only")
    if failures:
        print(f"\n{len(failures)} chart check(s) failed:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
