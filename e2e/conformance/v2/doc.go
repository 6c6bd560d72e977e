// Package conformance runs containerd 2.x's own snapshotter conformance suite
// (core/snapshots/testsuite) over gRPC against the real rustlayer daemon, one
// fresh daemon per test case, as ../ does with 1.6's. Run it through
// CONFORMANCE_SUITE=2.x hack/conformance.sh, as root.
package conformance
