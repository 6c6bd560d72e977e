#!/usr/bin/env bash
# Checks the Helm chart and its containerd config patcher without a cluster:
# helm lint, rendering with Helm's own engine (the helm-python-sdk package: no helm
# binary), every rendered object against the Kubernetes OpenAPI schemas
# (kubernetes-validate, strict), the DaemonSet, RBAC, config and values schema
# (e2e/chart/test_chart.py), and charts/rustlayer/files/patch-containerd.sh on
# sample containerd configs, read back by the real containerd when it is installed.
#
#   hack/chart-test.sh
#
# Installs its Python packages, pinned, into a virtualenv under .cache/chart-test/
# (from PyPI the first time). Needs python3 with venv (Debian python3-venv).
# Prints "ok - ..." / "not ok - ..." / "skip - ... (reason)" per check and ends
# with "chart-test: N passed, N failed, N skipped"; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=(
  helm-python-sdk==0.2.2      # Helm v4's Go SDK behind ctypes: lint, render, values schema
  kubernetes-validate==1.37.0 # Kubernetes 1.25-1.37 OpenAPI schemas (+ jsonschema, PyYAML)
)
venv=.cache/chart-test/venv
stamp=$venv/.requirements

if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
  echo "chart-test: installing ${requirements[*]} into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]}"
  printf '%s' "${requirements[*]}" >"$stamp"
fi

exec "$venv/bin/python" e2e/chart/test_chart.py
