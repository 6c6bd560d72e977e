# shellcheck shell=bash
# Sourced, from the tree's top, by the end-to-end test scripts: the hack/lib files
# they use (machine.sh, process.sh, report.sh, containerd.sh), and $repo, the
# tree's top.
# shellcheck source=hack/lib/machine.sh
source hack/lib/machine.sh
# shellcheck source=hack/lib/process.sh
source hack/lib/process.sh
# shellcheck source=hack/lib/report.sh
source hack/lib/report.sh
# shellcheck source=hack/lib/containerd.sh
source hack/lib/containerd.sh
# shellcheck disable=SC2034 # used by the scripts that source this file
repo=$PWD
