package conformance

import (
	"context"
	"os"
	"testing"

	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/testsuite"
)

// TestConformance runs every case of containerd's suite; each case gets its
// own root directory, and with it its own daemon.
func TestConformance(t *testing.T) {
	// The suite mounts overlayfs from this process; without root every case
	// would fail on mount, which reads like a daemon bug. Fail once, clearly.
	if os.Geteuid() != 0 {
		t.Fatal("the conformance suite mounts filesystems: run it as root")
	}
	cfg := daemonConfig{
		bin:     os.Getenv("RUSTLAYER_BIN"),
		backend: os.Getenv("RUSTLAYER_BACKEND"),
		logDir:  os.Getenv("RUSTLAYER_CONFORMANCE_LOGS"),
		config:  os.Getenv("RUSTLAYER_CONFIG_TOML"),
	}
	if cfg.bin == "" {
		t.Fatal("RUSTLAYER_BIN is not set: point it at the rustlayer binary")
	}
	if st, err := os.Stat(cfg.bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("RUSTLAYER_BIN=%s is not an executable file (%v)", cfg.bin, err)
	}
	if cfg.logDir != "" {
		if err := os.MkdirAll(cfg.logDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	testsuite.SnapshotterSuite(t, "rustlayer", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return newSnapshotter(ctx, cfg, root)
	})
}
