// Package daemon runs one rustlayer daemon per conformance case and turns it
// into the snapshotter the suite asks for. It is shared by the harnesses for
// containerd 1.6's suite (e2e/conformance) and 2.x's (e2e/conformance/v2): they
// differ only in how containerd's proxy snapshotter is built and dialed, which
// this package leaves to them. It needs nothing from containerd, so it builds
// against either version's dependencies.
package daemon

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
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
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

// Config says how every case's daemon is started.
type Config struct {
	Bin     string // the rustlayer binary
	Backend string // --backend value; empty leaves the daemon's default
	LogDir  string // where each case's daemon log is kept; empty: nowhere
	Config  string // contents of each case's config file (e.g. a small thin pool)
	// Cases the suite itself skips (by their last name element, as
	// "Rename"); any other skip fails its case, since it would pass without
	// having run.
	AllowedSkips []string
}

// ConfigFromEnv reads the daemon settings hack/conformance.sh passes, and
// fails t unless they and the machine can run the suite at all.
func ConfigFromEnv(t testing.TB, allowedSkips ...string) Config {
	t.Helper()
	// The suite mounts overlayfs from this process; without root every case
	// would fail on mount, which reads like a daemon bug. Fail once, clearly.
	if os.Geteuid() != 0 {
		t.Fatal("the conformance suite mounts filesystems: run it as root")
	}
	cfg := Config{
		Bin:          os.Getenv("RUSTLAYER_BIN"),
		Backend:      os.Getenv("RUSTLAYER_BACKEND"),
		LogDir:       os.Getenv("RUSTLAYER_CONFORMANCE_LOGS"),
		Config:       os.Getenv("RUSTLAYER_CONFIG_TOML"),
		AllowedSkips: allowedSkips,
	}
	if cfg.Bin == "" {
		t.Fatal("RUSTLAYER_BIN is not set: point it at the rustlayer binary")
	}
	if st, err := os.Stat(cfg.Bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Fatalf("RUSTLAYER_BIN=%s is not an executable file (%v)", cfg.Bin, err)
	}
	if cfg.LogDir != "" {
		if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return cfg
}

// Daemon is one rustlayer process serving one test case.
type Daemon struct {
	cmd     *exec.Cmd
	socket  string
	logPath string
	exited  chan struct{} // closed once cmd.Wait has returned
	waitErr error         // cmd.Wait's result; read only after exited is closed
}

// Socket is the unix socket the daemon serves gRPC on.
func (d *Daemon) Socket() string { return d.socket }

// Start runs a daemon with its state, socket, config and log in root, and
// returns once it accepts connections. On error the Daemon, if not nil, is
// stopped and returned only for its log.
func Start(cfg Config, root string) (*Daemon, error) {
	// sun_path holds 108 bytes with the NUL; a longer path fails in bind
	// with an error that does not say why.
	if sock := filepath.Join(root, "rustlayer.sock"); len(sock) > 107 {
		return nil, fmt.Errorf("socket path %s is longer than 107 bytes: use a shorter TMPDIR", sock)
	}
	// An empty config file keeps a host's /etc/rustlayer/config.toml (say, a
	// fixed metrics port) from leaking into, and colliding between, cases.
	config := filepath.Join(root, "rustlayer.toml")
	if err := os.WriteFile(config, []byte(cfg.Config), 0o644); err != nil {
		return nil, err
	}
	d := &Daemon{
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
	if cfg.Backend != "" {
		args = append(args, "--backend", cfg.Backend)
	}
	d.cmd = exec.Command(cfg.Bin, args...)
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
	started := make(chan error, 1)
	go func() {
		// The death signal comes when the thread that forked the child
		// ends, not the process. containerd's mount code ends threads (a
		// long overlay option string is mounted from a locked thread that
		// unshares its working directory and is never unlocked), and a
		// daemon forked on such a thread earlier would be killed mid-case.
		// Holding this thread until the daemon has exited keeps it alive
		// for exactly as long as the daemon needs.
		runtime.LockOSThread()
		if err := d.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cfg.Bin, err)
	}

	if err := d.waitReady(); err != nil {
		d.Kill()
		return d, fmt.Errorf("%w\n%s", err, d.LogText())
	}
	return d, nil
}

// waitReady polls until the socket accepts a connection, the daemon exits,
// or the deadline passes.
func (d *Daemon) waitReady() error {
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

// Stop asks the daemon to shut down and demands a clean exit in time.
func (d *Daemon) Stop() error {
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
		d.Kill()
		return fmt.Errorf("daemon still running %v after SIGTERM; killed it", stopTimeout)
	}
}

// Kill ends the daemon at once and waits for it.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	<-d.exited
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// LogText is the daemon's log, or its tail when it is long, ready to print.
func (d *Daemon) LogText() string {
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
func (d *Daemon) keepLog(dir, name string) error {
	if dir == "" {
		return nil
	}
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".log"), b, 0o644)
}

// waitConnected waits up to readyTimeout for the channel's HTTP/2 handshake
// with the daemon to complete.
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

// Connect builds a snapshotter on a gRPC channel to the daemon's socket, the
// way the caller's containerd version builds its proxy plugin. The channel
// must be connecting already (grpc.NewClient's start idle: call Connect).
type Connect[S io.Closer] func(ctx context.Context, socket string) (S, *grpc.ClientConn, error)

// Open is the body of the suite's snapshotter factory: a fresh daemon in root
// and a snapshotter talking to it over connect's channel, with a close
// function that stops the daemon and keeps its log. logger is the logger the
// suite put in the case's ctx; it holds the case's testing.T.
func Open[S io.Closer](ctx context.Context, cfg Config, logger *logrus.Logger, root string, connect Connect[S]) (S, func() error, error) {
	var none S
	t := caseT(logger)
	logName := filepath.Base(filepath.Dir(root))
	if t != nil {
		logName = strings.ReplaceAll(t.Name(), "/", "_")
	}
	d, err := Start(cfg, root)
	if err != nil {
		if d != nil {
			_ = d.keepLog(cfg.LogDir, logName)
		}
		return none, nil, err
	}
	sn, conn, err := connect(ctx, d.socket)
	if err != nil {
		d.Kill()
		_ = d.keepLog(cfg.LogDir, logName)
		return none, nil, fmt.Errorf("dial %s: %w\n%s", d.socket, err, d.LogText())
	}
	// containerd's dial gives a handshake attempt as little as a second, and
	// calls fail fast while the channel is down; under emulation a busy daemon
	// can miss the first attempts. Wait, as containerd's own retries would,
	// until the channel is up before the suite's first call.
	if err := waitConnected(ctx, conn); err != nil {
		conn.Close()
		d.Kill()
		_ = d.keepLog(cfg.LogDir, logName)
		return none, nil, fmt.Errorf("gRPC to %s: %w\n%s", d.socket, err, d.LogText())
	}

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
			if err := d.Stop(); err != nil {
				errs = append(errs, err.Error())
			}
			if err := d.keepLog(cfg.LogDir, logName); err != nil {
				errs = append(errs, fmt.Sprintf("keep daemon log: %v", err))
			}
			if len(errs) > 0 {
				closeErr = errors.New(strings.Join(errs, "; "))
			}
			// A skip would let a case pass without running, so one the
			// suite does not always make fails here as well as in
			// hack/conformance.sh.
			if t != nil && t.Skipped() && !cfg.skipAllowed(t.Name()) {
				t.Errorf("%s skipped; only %v may skip", t.Name(), cfg.AllowedSkips)
			}
			switch {
			case t == nil:
				// Cannot tell whether the case failed: show the log always.
				fmt.Fprintf(os.Stderr, "%s\n", d.LogText())
			case t.Failed() || closeErr != nil:
				t.Log(d.LogText())
			}
		})
		return closeErr
	}
	return sn, closeFn, nil
}

func (cfg Config) skipAllowed(caseName string) bool {
	for _, name := range cfg.AllowedSkips {
		if strings.HasSuffix(caseName, "/"+name) {
			return true
		}
	}
	return false
}

// caseT finds the running case's testing.T in the logger the suite puts in
// its ctx (containerd's logtest.WithT keeps it in an unexported hook field,
// in 1.6 and 2.x alike). The factory API passes no T, and without one we
// could not show the daemon log only for failing cases, nor name the kept log
// after its case. Nil if not found.
func caseT(logger *logrus.Logger) testing.TB {
	if logger == nil {
		return nil
	}
	tbType := reflect.TypeOf((*testing.TB)(nil)).Elem()
	for _, hooks := range logger.Hooks {
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
