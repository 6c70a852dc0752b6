#!/usr/bin/env python3
"""Installs, upgrades or uninstalls charts/s2s-operator as a Helm release, with real Helm
(v4, the helm-python-sdk library that check_chart.py uses; no helm binary), so that
tests/e2e_node.rs can install the chart as a user does.

  release.py install   KUBECONFIG NAMESPACE RELEASE VALUES_JSON TIMEOUT_SECONDS
  release.py upgrade   KUBECONFIG NAMESPACE RELEASE VALUES_JSON TIMEOUT_SECONDS
  release.py uninstall KUBECONFIG NAMESPACE RELEASE TIMEOUT_SECONDS

install and upgrade wait (Helm's watcher) until every Deployment is available, so until
the Pods pass their readiness probes; uninstall waits until the objects are gone. Prints
the release's name, revision and status (JSON); exits 1 with Helm's error otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import helm_python as helm

CHART = Path(__file__).resolve().parents[2] / "charts" / "s2s-operator"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("install", "upgrade", "uninstall"):
        print(__doc__, file=sys.stderr)
        return 2
    action = argv[1]
    if action == "uninstall":
        kubeconfig, namespace, release, timeout = argv[2:6]
    else:
        kubeconfig, namespace, release, values_json, timeout = argv[2:7]
    with helm.Config(kubeconfig_path=kubeconfig, namespace=namespace) as config:
        try:
            if action == "install":
                rel = config.install(CHART, release, json.loads(values_json), namespace=namespace,
                                     timeout=int(timeout), wait="watcher")
            elif action == "upgrade":
                rel = config.upgrade(CHART, release, json.loads(values_json), namespace=namespace,
                                     timeout=int(timeout), wait="watcher")
            else:
                rel = config.uninstall(release, timeout=int(timeout), wait="watcher")
                rel = rel.get("release", rel)
        except helm.HelmError as e:
            print(f"helm {action} {release}: {e}", file=sys.stderr)
            return 1
    print(json.dumps({k: rel.get(k) for k in ("name", "revision", "status")}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
