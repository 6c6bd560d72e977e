package conformance

import (
	"context"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"github.com/rustlayer/rustlayer/e2e/conformance/daemon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// TestConformance runs every case of containerd's suite; each case gets its
// own root directory, and with it its own daemon.
func TestConformance(t *testing.T) {
	// 1.6's suite skips Rename always (it fails on some kernels' overlayfs).
	cfg := daemon.ConfigFromEnv(t, "Rename")
	testsuite.SnapshotterSuite(t, "rustlayer", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return daemon.Open(ctx, cfg, log.G(ctx).Logger, root, dial)
	})
}

// dial connects exactly as containerd 1.6 dials a proxy plugin (services/server's
// getClient): the "unix://" target makes grpc send ":authority: localhost",
// where a bare path would send the path itself.
func dial(ctx context.Context, socket string) (snapshots.Snapshotter, *grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(socket),
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		return nil, nil, err
	}
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rustlayer"), conn, nil
}
