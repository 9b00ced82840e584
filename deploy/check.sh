#!/usr/bin/env bash
# Offline checks of the deployment files, for CI: docker-compose.yml with Debian's
# `docker-compose config`, the Kubernetes manifests with `kubernetes-validate` (PyPI), and the
# KEDA objects (a CRD kubernetes-validate has no schema for) for the fields KEDA requires.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
command -v docker-compose >/dev/null || { echo "check: docker-compose missing (scripts/setup.sh)" >&2; exit 1; }
docker-compose -f docker-compose.yml config -q
echo "check: docker-compose.yml ok"
command -v kubernetes-validate >/dev/null || { echo "check: kubernetes-validate missing (pip install kubernetes-validate)" >&2; exit 1; }
kubernetes-validate --strict deploy/kubernetes/granda.yaml
python3 - deploy/kubernetes/keda-scaledobject.yaml <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {d["kind"]: d for d in docs}
so = kinds["ScaledObject"]
assert so["apiVersion"] == "keda.sh/v1alpha1"
assert so["spec"]["scaleTargetRef"]["name"] == "granda-worker"
t = so["spec"]["triggers"][0]
assert t["type"] == "rabbitmq" and t["metadata"]["mode"] == "QueueLength"
assert t["metadata"]["queueName"].startswith("granda.work.")
assert int(t["metadata"]["value"]) > 0
assert kinds["TriggerAuthentication"]["metadata"]["name"] == t["authenticationRef"]["name"]
print("check: KEDA objects ok")
PY
