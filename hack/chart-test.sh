#!/usr/bin/env bash
# Checks the Helm chart and its containerd config patcher without a cluster:
# helm lint, rendering with Helm's own engine (the helm-python-sdk package: no helm
# binary), every rendered object against the Kubernetes OpenAPI schemas
# (kubernetes-validate, strict), the DaemonSet, RBAC, config and values schema
# (e2e/chart/test_chart.py), charts/rustlayer/files/patch-containerd.sh on sample
# containerd configs and on the `config default` of containerd 1.6.20, 1.7.24 and
# 2.1.9 (each fetched by hack/containerd-fetch.sh), read back and, as root, run by
# that containerd; and shellcheck on hack/'s and the chart's scripts. Then
# e2e/chart/test_two_releases.py: a second release (another pluginName, its own
# RuntimeClass and default_size) beside the first, rendered, patched into the
# same containerd configs in turn and at once, run, and removed in either order.
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

# The releases the patcher is checked against. As root (hack/test.sh, CI) one that
# cannot be fetched fails the run; otherwise its checks skip, saying why.
releases=()
for version in 1.6.20 1.7.24 2.1.9; do
  if dir=$(hack/containerd-fetch.sh "$version"); then
    releases+=("$version=$dir")
  elif [[ $(id -u) -eq 0 ]]; then
    echo "chart-test: cannot fetch containerd $version" >&2
    exit 1
  fi
done
export CONTAINERD_RELEASES="${releases[*]}"

# e2e/chart/test_chart.py's checks and those of two releases side by side, one summary.
exec "$venv/bin/python" e2e/chart/test_two_releases.py
