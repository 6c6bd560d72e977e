// Package conformance runs containerd 1.6's own snapshotter conformance suite
// (snapshots/testsuite) over gRPC against the real rustlayer daemon, one fresh
// daemon per test case. Run it through hack/conformance.sh, as root. v2 does
// the same with containerd 2.x's suite; both run their daemons with daemon.
package conformance
