package conformance

import (
	"context"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/dialer"
	"github.com/containerd/log"
	"github.com/rustlayer/rustlayer/e2e/conformance/daemon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
)

// TestConformance runs every case of containerd's suite; each case gets its
// own root directory, and with it its own daemon.
func TestConformance(t *testing.T) {
	// 2.x's suite skips nothing on Linux.
	cfg := daemon.ConfigFromEnv(t)
	testsuite.SnapshotterSuite(t, suiteName(cfg.Backend), func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return daemon.Open(ctx, cfg, log.G(ctx).Logger, root, dial)
	})
}

// dial connects exactly as containerd 2.x dials a proxy plugin
// (cmd/containerd/server's getClient): the "unix://" target makes grpc send
// ":authority: localhost", where a bare path would send the path itself.
func dial(_ context.Context, socket string) (snapshots.Snapshotter, *grpc.ClientConn, error) {
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	conn, err := grpc.NewClient(dialer.DialAddress(socket),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		return nil, nil, err
	}
	// A new client stays idle until its first call; the caller waits for the
	// channel to be up, so start connecting now.
	conn.Connect()
	return proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rustlayer"), conn, nil
}

// suiteName is the snapshotter name the suite is told, which picks what its
// Rename case expects. Without redirect_dir, overlayfs refuses to rename a
// directory that comes from a lower layer (EXDEV), so the suite renames only
// files on the snapshotters it knows mount overlayfs. rustlayer's overlay
// backend (the daemon's default) mounts overlayfs as containerd's own
// overlayfs snapshotter does, without redirect_dir, and is held to the same
// expectations; any other backend gets the full check.
func suiteName(backend string) string {
	if backend == "" || backend == "overlay" {
		return "overlayfs"
	}
	return "rustlayer-" + backend
}
