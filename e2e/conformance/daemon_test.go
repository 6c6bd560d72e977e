package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/defaults"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/pkg/dialer"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
)

const (
	// A debug build on a busy machine runs its preflight checks (test
	// mounts) before it listens; give it room, but not forever.
	readyTimeout = 20 * time.Second
	// A clean shutdown only waits for in-flight requests, and there are none
	// at close time; anything slower is a bug worth failing on.
	stopTimeout = 15 * time.Second
	// Enough of a failing case's daemon log to debug it without drowning the
	// test output; the whole log is kept in RUSTLAYER_CONFORMANCE_LOGS.
	maxPrintedLog = 256 << 10
)

type daemonConfig struct {
	bin     string // the rustlayer binary
	backend string // --backend value; empty leaves the daemon's default
	logDir  string // where each case's daemon log is kept; empty: nowhere
	config  string // contents of each case's config file (e.g. a small thin pool)
}

// daemon is one rustlayer process serving one test case.
type daemon struct {
	cmd     *exec.Cmd
	socket  string
	logPath string
	exited  chan struct{} // closed once cmd.Wait has returned
	waitErr error         // cmd.Wait's result; read only after exited is closed
}

func startDaemon(cfg daemonConfig, root string) (*daemon, error) {
	// sun_path holds 108 bytes with the NUL; a longer path fails in bind
	// with an error that does not say why.
	if sock := filepath.Join(root, "rustlayer.sock"); len(sock) > 107 {
		return nil, fmt.Errorf("socket path %s is longer than 107 bytes: use a shorter TMPDIR", sock)
	}
	// An empty config file keeps a host's /etc/rustlayer/config.toml (say, a
	// fixed metrics port) from leaking into, and colliding between, cases.
	config := filepath.Join(root, "rustlayer.toml")
	if err := os.WriteFile(config, []byte(cfg.config), 0o644); err != nil {
		return nil, err
	}
	d := &daemon{
		socket:  filepath.Join(root, "rustlayer.sock"),
		logPath: filepath.Join(root, "rustlayer.log"),
		exited:  make(chan struct{}),
	}
	logFile, err := os.Create(d.logPath)
	if err != nil {
		return nil, err
	}
	// The child holds its own copy of the descriptor.
	defer logFile.Close()

	args := []string{"serve",
		"--root", filepath.Join(root, "state"),
		"--address", d.socket,
		"--config", config,
	}
	if cfg.backend != "" {
		args = append(args, "--backend", cfg.backend)
	}
	d.cmd = exec.Command(cfg.bin, args...)
	d.cmd.Stdout = logFile
	d.cmd.Stderr = logFile
	d.cmd.Env = os.Environ()
	if os.Getenv("RUST_LOG") == "" {
		// The log is only shown for failing cases, so make it worth reading.
		d.cmd.Env = append(d.cmd.Env, "RUST_LOG=info,rustlayer=debug")
	}
	// If the test binary dies (timeout panic, SIGKILL), take the daemons with
	// it instead of leaving them serving sockets in deleted directories.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.bin, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()

	if err := d.waitReady(); err != nil {
		d.kill()
		// The daemon is returned for its log, not for use.
		return d, fmt.Errorf("%w\n%s", err, d.logText())
	}
	return d, nil
}

// waitConnected waits up to readyTimeout for the channel's HTTP/2 handshake with
// the daemon to complete.
func waitConnected(ctx context.Context, conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for state := conn.GetState(); state != connectivity.Ready; state = conn.GetState() {
		if !conn.WaitForStateChange(ctx, state) {
			return fmt.Errorf("not connected after %v (last state %v)", readyTimeout, state)
		}
	}
	return nil
}

// waitReady polls until the socket accepts a connection, the daemon exits,
// or the deadline passes.
func (d *daemon) waitReady() error {
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := net.DialTimeout("unix", d.socket, time.Second)
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("daemon exited before serving %s: %v", d.socket, d.waitErr)
		case <-deadline.C:
			return fmt.Errorf("daemon not accepting on %s after %v: %v", d.socket, readyTimeout, err)
		case <-tick.C:
		}
	}
}

// stop asks the daemon to shut down and demands a clean exit in time.
func (d *daemon) stop() error {
	select {
	case <-d.exited:
		// Nobody asked it to go; a daemon that quits mid-case is a bug even
		// if its exit status says otherwise.
		return fmt.Errorf("daemon exited before close: %v", exitStatus(d.waitErr))
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("SIGTERM daemon: %w", err)
	}
	select {
	case <-d.exited:
		if d.waitErr != nil {
			return fmt.Errorf("daemon did not exit cleanly on SIGTERM: %v", d.waitErr)
		}
		return nil
	case <-time.After(stopTimeout):
		d.kill()
		return fmt.Errorf("daemon still running %v after SIGTERM; killed it", stopTimeout)
	}
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
	<-d.exited
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logText is the daemon's log, or its tail when it is long, ready to print.
func (d *daemon) logText() string {
	f, err := os.Open(d.logPath)
	if err != nil {
		return fmt.Sprintf("(daemon log unreadable: %v)", err)
	}
	defer f.Close()
	var note string
	if st, err := f.Stat(); err == nil && st.Size() > maxPrintedLog {
		if _, err := f.Seek(-maxPrintedLog, io.SeekEnd); err == nil {
			note = fmt.Sprintf(", last %d of %d bytes", maxPrintedLog, st.Size())
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return fmt.Sprintf("(daemon log unreadable: %v)", err)
	}
	return fmt.Sprintf("=== daemon log (%s%s)\n%s=== end of daemon log", d.logPath, note, b)
}

// keepLog copies the daemon's log out of the case's root, which the suite
// deletes, so it can be read after the run.
func (d *daemon) keepLog(dir, name string) error {
	if dir == "" {
		return nil
	}
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".log"), b, 0o644)
}

// newSnapshotter is the suite's factory: a fresh daemon in root, and a proxy
// snapshotter talking to it the way containerd's proxy plugin does.
func newSnapshotter(ctx context.Context, cfg daemonConfig, root string) (snapshots.Snapshotter, func() error, error) {
	t := caseT(ctx)
	logName := filepath.Base(filepath.Dir(root))
	if t != nil {
		logName = strings.ReplaceAll(t.Name(), "/", "_")
	}
	d, err := startDaemon(cfg, root)
	if err != nil {
		if d != nil {
			_ = d.keepLog(cfg.logDir, logName)
		}
		return nil, nil, err
	}
	// Dial exactly as containerd dials a proxy plugin (services/server's
	// getClient): the "unix://" target makes grpc send ":authority:
	// localhost", where a bare path would send the path itself.
	backoffConfig := backoff.DefaultConfig
	backoffConfig.MaxDelay = 3 * time.Second
	conn, err := grpc.DialContext(ctx, dialer.DialAddress(d.socket),
		grpc.WithInsecure(),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoffConfig}),
		grpc.WithContextDialer(dialer.ContextDialer),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(defaults.DefaultMaxRecvMsgSize)),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(defaults.DefaultMaxSendMsgSize)),
	)
	if err != nil {
		d.kill()
		_ = d.keepLog(cfg.logDir, logName)
		return nil, nil, fmt.Errorf("dial %s: %w\n%s", d.socket, err, d.logText())
	}
	// containerd's dial gives a handshake attempt as little as a second, and calls
	// fail fast while the channel is down; under emulation a busy daemon can miss
	// the first attempts. Wait, as containerd's own retries would, until the channel
	// is up before the suite's first call.
	if err := waitConnected(ctx, conn); err != nil {
		conn.Close()
		d.kill()
		_ = d.keepLog(cfg.logDir, logName)
		return nil, nil, fmt.Errorf("gRPC to %s: %w\n%s", d.socket, err, d.logText())
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "rustlayer")

	// The suite may close more than once (CloseTwice); only the first close
	// stops the daemon, and every close reports what the first one found.
	var once sync.Once
	var closeErr error
	closeFn := func() error {
		once.Do(func() {
			var errs []string
			if err := sn.Close(); err != nil {
				errs = append(errs, fmt.Sprintf("close snapshotter: %v", err))
			}
			if err := conn.Close(); err != nil {
				errs = append(errs, fmt.Sprintf("close grpc connection: %v", err))
			}
			if err := d.stop(); err != nil {
				errs = append(errs, err.Error())
			}
			if err := d.keepLog(cfg.logDir, logName); err != nil {
				errs = append(errs, fmt.Sprintf("keep daemon log: %v", err))
			}
			if len(errs) > 0 {
				closeErr = errors.New(strings.Join(errs, "; "))
			}
			// The suite's Rename always skips; any other skip would let a
			// case pass without running, so it fails here as well as in
			// hack/conformance.sh.
			if t != nil && t.Skipped() && !strings.HasSuffix(t.Name(), "/Rename") {
				t.Errorf("%s skipped; only Rename may skip", t.Name())
			}
			switch {
			case t == nil:
				// Cannot tell whether the case failed: show the log always.
				fmt.Fprintf(os.Stderr, "%s\n", d.logText())
			case t.Failed() || closeErr != nil:
				t.Log(d.logText())
			}
		})
		return closeErr
	}
	return sn, closeFn, nil
}

// caseT finds the running case's *testing.T in the logger the suite puts in
// ctx (logtest.WithT keeps it in an unexported hook field). The factory API
// passes no T, and without one we could not show the daemon log only for
// failing cases, nor name the kept log after its case. Nil if not found.
func caseT(ctx context.Context) testing.TB {
	tbType := reflect.TypeOf((*testing.TB)(nil)).Elem()
	for _, hooks := range log.G(ctx).Logger.Hooks {
		for _, h := range hooks {
			v := reflect.ValueOf(h)
			if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
				continue
			}
			f := v.Elem().FieldByName("t")
			if !f.IsValid() || f.Type() != tbType {
				continue
			}
			tb, _ := reflect.NewAt(tbType, unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(testing.TB)
			if tb != nil {
				return tb
			}
		}
	}
	return nil
}
