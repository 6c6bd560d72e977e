#!/usr/bin/env bash
# The chart on a real Kubernetes: a kind cluster whose containerd knows rustlayer
# (e2e/kind/kind-config.yaml), the image from hack/build-image.sh loaded into it,
# `helm install`, pods of the rustlayer RuntimeClass whose snapshots must be in
# rustlayer, `helm upgrade` rolling the DaemonSet, and `helm uninstall` leaving
# the nodes' containerd config and labels as they were.
#
#   hack/kind-e2e.sh
#   KIND_E2E_PATCHER=1 hack/kind-e2e.sh   containerd config from the chart's
#                                         patcher instead of kind's config patch
#   KIND_KEEP=1 hack/kind-e2e.sh          keep the cluster afterwards
#
# Needs docker (with a running engine), kind, helm and kubectl; without them it
# prints why it skipped and exits 0. Prints "ok - ..." / "not ok - ..." per check
# and ends with "kind-e2e: N passed, N failed"; exits 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

missing=()
for tool in docker kind helm kubectl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "kind-e2e: skipped: needs docker, kind, helm, kubectl (missing: ${missing[*]})"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "kind-e2e: skipped: needs docker, kind, helm, kubectl (missing: a running Docker engine)"
  exit 0
fi

cluster=${KIND_CLUSTER:-rustlayer-e2e}
ns=kube-system
release=rustlayer
patcher=${KIND_E2E_PATCHER:-0}
archive=$repo/.cache/image/rustlayer.oci.tar
work=$(mktemp -d)
export KUBECONFIG=$work/kubeconfig

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else not_ok "$what"; fi
}
fatal() {
  not_ok "$*"
  echo "kind-e2e: $passed passed, $failed failed (stopped early)"
  exit 1
}

cleanup() {
  local rc=$?
  if ((failed)) || ((rc)); then
    echo "--- diagnostics"
    kubectl get pods -A -o wide 2>&1 | sed 's/^/    /' || true
    kubectl -n "$ns" logs -l app.kubernetes.io/name=rustlayer --all-containers --tail=50 2>&1 | sed 's/^/    /' || true
  fi
  if [[ ${KIND_KEEP:-0} == 1 ]]; then
    echo "kind-e2e: keeping cluster $cluster (KUBECONFIG=$work/kubeconfig)"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT

# --- image -------------------------------------------------------------------

hack/build-image.sh
[[ -f $archive ]] || fatal "hack/build-image.sh produced $archive"
# The name containerd gives the image on import, from the archive's index.
image=${IMAGE:-$(tar -xOf "$archive" index.json | python3 -c '
import json, sys
for m in json.load(sys.stdin).get("manifests", []):
    a = m.get("annotations", {})
    name = a.get("io.containerd.image.name") or a.get("org.opencontainers.image.ref.name", "")
    if "/" in name or ":" in name:
        print(name)
        break
')}
[[ -n $image ]] || fatal "the image archive names its image (io.containerd.image.name), or IMAGE is set"
repository=${image%:*} tag=${image##*:}
[[ $repository != "$image" && $tag != */* ]] || fatal "image $image has a tag"

# --- cluster -------------------------------------------------------------------

config=e2e/kind/kind-config.yaml
if [[ $patcher == 1 ]]; then
  # The same cluster without the hand-written containerd config: the chart adds it.
  sed '/^containerdConfigPatches:/,$d' "$config" >"$work/kind-config.yaml"
  config=$work/kind-config.yaml
fi
kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
kind create cluster --name "$cluster" --config "$config" --kubeconfig "$KUBECONFIG" --wait 3m ||
  fatal "kind create cluster"
mapfile -t nodes < <(kind get nodes --name "$cluster")
ok "kind cluster $cluster with ${#nodes[@]} nodes"

kind load image-archive "$archive" --name "$cluster" || fatal "kind load image-archive $archive"
ok "image $image loaded into every node"

containerd_config_sums() {
  local node
  for node in "${nodes[@]}"; do
    docker exec "$node" sha256sum /etc/containerd/config.toml
  done
}
before=$(containerd_config_sums)

# --- install -------------------------------------------------------------------

values=(
  --set "image.repository=$repository" --set "image.tag=$tag" --set image.pullPolicy=Never
  --set containerdConfig.patch.enabled=true
)
helm install "$release" charts/rustlayer -n "$ns" "${values[@]}" --wait --timeout 5m ||
  fatal "helm install"
ok "helm install"

rollout() {
  kubectl -n "$ns" rollout status "daemonset/$release" --timeout 5m
}
check "DaemonSet rolled out on every node" rollout
ready=$(kubectl -n "$ns" get "daemonset/$release" -o jsonpath='{.status.numberReady}')
check "one ready rustlayer pod per node ($ready of ${#nodes[@]})" test "$ready" -eq "${#nodes[@]}"

patcher_logs=$(kubectl -n "$ns" logs -l app.kubernetes.io/name=rustlayer -c containerd-config --tail=-1 2>&1 || true)
if [[ $patcher == 1 ]]; then
  check "the patcher added rustlayer to containerd's config and restarted it" \
    grep -q "changed; restarting containerd" <<<"$patcher_logs"
  for node in "${nodes[@]}"; do
    check "$node: containerd lists the rustlayer proxy plugin" \
      sh -c "docker exec '$node' ctr plugins ls | grep -q 'io.containerd.snapshotter.v1 *rustlayer'"
  done
else
  check "the patcher keeps containerd tables written by hand, without a restart" \
    grep -q "outside the block; keeping it" <<<"$patcher_logs"
fi

node_label_ready() {
  local node=$1 want=$2 _ value
  for _ in $(seq 60); do
    value=$(kubectl get node "$node" -o jsonpath='{.metadata.labels.rustlayer\.io/ready}')
    if [[ $want == true && $value == true ]] || [[ $want != true && $value != true ]]; then return 0; fi
    sleep 2
  done
  return 1
}
for node in "${nodes[@]}"; do
  check "$node: labelled rustlayer.io/ready=true by its daemon" node_label_ready "$node" true
done

# --- workload on rustlayer -------------------------------------------------------

# The sandbox image is on every kind node already, so the workload needs no registry.
pause=$(docker exec "${nodes[0]}" crictl images -o json | python3 -c '
import json, sys
for img in json.load(sys.stdin)["images"]:
    for tag in img.get("repoTags") or []:
        if "/pause:" in tag:
            print(tag)
            sys.exit()
')
[[ -n $pause ]] || fatal "kind's nodes hold a pause image"
sed "s|PAUSE_IMAGE|$pause|" e2e/kind/workload.yaml | kubectl apply -f - >/dev/null
check "pods with runtimeClassName rustlayer run on every node" \
  kubectl -n default rollout status daemonset/rustlayer-workload --timeout 3m

rustlayer_pod_on() {
  kubectl -n "$ns" get pods -l app.kubernetes.io/name=rustlayer \
    --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'
}
mapfile -t workload < <(kubectl -n default get pods -l app=rustlayer-workload \
  -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName} {.status.containerStatuses[0].containerID}{"\n"}{end}')
for line in "${workload[@]}"; do
  read -r pod node id <<<"$line"
  id=${id#containerd://}
  daemon=$(rustlayer_pod_on "$node")
  # CRI names a container's snapshot after the container id.
  listing=$(kubectl -n "$ns" exec "$daemon" -- rustlayer ls -o json 2>&1 || true)
  check "$pod on $node: its container's snapshot ($id) is in rustlayer (rustlayer ls)" \
    grep -q "$id" <<<"$listing"
done

daemon=$(rustlayer_pod_on "${nodes[0]}")
metrics=$(kubectl get --raw "/api/v1/namespaces/$ns/pods/$daemon:9192/proxy/metrics" 2>&1 || true)
check "$daemon serves rustlayer metrics through its pod IP" grep -q '^rustlayer_' <<<"$metrics"
check "$daemon reports snapshot requests in its metrics" \
  sh -c "grep '^rustlayer_' | grep -qi 'prepare'" <<<"$metrics"

# --- upgrade -----------------------------------------------------------------------

old_pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=rustlayer -o name | sort)
helm upgrade "$release" charts/rustlayer -n "$ns" --reuse-values --set config.logFormat=json \
  --wait --timeout 5m >/dev/null || fatal "helm upgrade"
ok "helm upgrade (log_format json)"
check "DaemonSet rolled out again after the upgrade" rollout
new_pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=rustlayer -o name | sort)
check "every rustlayer pod was replaced" test -z "$(comm -12 <(echo "$old_pods") <(echo "$new_pods"))"
toml=$(kubectl -n "$ns" get configmap "$release" -o jsonpath='{.data.config\.toml}')
check "config.toml says log_format = \"json\"" grep -qx 'log_format = "json"' <<<"$toml"
daemon=$(rustlayer_pod_on "${nodes[0]}")
check "the daemon logs JSON lines" \
  sh -c "kubectl -n '$ns' logs '$daemon' -c rustlayer | grep -q '^{'"
check "rustlayer workload pods kept running across the daemon's restart" \
  kubectl -n default rollout status daemonset/rustlayer-workload --timeout 2m

# --- uninstall -----------------------------------------------------------------------

kubectl -n default delete daemonset rustlayer-workload --wait --timeout 2m >/dev/null
# Taking rustlayer out of containerd's config needs the nodes, so it happens
# through the DaemonSet before the release goes.
helm upgrade "$release" charts/rustlayer -n "$ns" --reuse-values \
  --set containerdConfig.patch.mode=remove --wait --timeout 5m >/dev/null || fatal "helm upgrade (patch mode remove)"
check "DaemonSet rolled out with the patcher removing its block" rollout
helm uninstall "$release" -n "$ns" --wait --timeout 3m >/dev/null || fatal "helm uninstall"
ok "helm uninstall"
no_daemon_pods() {
  local _
  for _ in $(seq 60); do
    [[ -z $(kubectl -n "$ns" get pods -l app.kubernetes.io/name=rustlayer -o name) ]] && return 0
    sleep 2
  done
  return 1
}
check "no rustlayer pods left" no_daemon_pods
after=$(containerd_config_sums)
check "every node's containerd config is as before the install" test "$before" == "$after"
for node in "${nodes[@]}"; do
  check "$node: no longer labelled rustlayer.io/ready=true" node_label_ready "$node" false
done

echo "kind-e2e: $passed passed, $failed failed"
((failed == 0))
