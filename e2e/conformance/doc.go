// Package conformance runs containerd's own snapshotter conformance suite
// (snapshots/testsuite) over gRPC against the real rustlayer daemon, one fresh
// daemon per test case. Run it through hack/conformance.sh, as root.
package conformance
