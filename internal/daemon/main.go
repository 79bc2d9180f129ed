package daemon

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/banger-dev/banger/internal/api"
	"github.com/banger-dev/banger/internal/config"
	"golang.org/x/sys/unix"
)

// Main is bangerd's entry point: flags over config over defaults, logs to
// stderr and <state dir>/bangerd.log, serve until ctx is done. It returns
// the process exit code.
func Main(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bangerd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", "", "state directory (config state_dir, env BANGER_STATE_DIR)")
	runDir := fs.String("run-dir", "", "run directory (config run_dir, env BANGER_RUN_DIR)")
	socket := fs.String("socket", "", "API socket path (config socket, env BANGER_SOCKET)")
	logLevel := fs.String("log-level", "", "debug, info, warn or error")
	version := fs.Bool("version", false, "print the version and exit")
	recover := fs.Bool("recover", false, "rebuild the records of VMs missing from the store from their directories, then start")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *version {
		fmt.Fprintln(stderr, "bangerd", api.Version)
		return 0
	}
	cfg, err := config.Load(nil)
	if err != nil {
		fmt.Fprintln(stderr, "bangerd:", err)
		return 1
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	if *runDir != "" {
		cfg.RunDir = *runDir
		if *socket == "" && os.Getenv("BANGER_SOCKET") == "" {
			cfg.Socket = ""
		}
	}
	if *socket != "" {
		cfg.Socket = *socket
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	if *stateDir != "" && os.Getenv("BANGER_SSH_KEY_PATH") == "" {
		cfg.SSHKeyPath = ""
		cfg.ImageCacheDir = ""
	}
	cfg.Finish()
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		fmt.Fprintln(stderr, "bangerd:", err)
		return 1
	}
	logPath := filepath.Join(cfg.StateDir, "bangerd.log")
	rotateLog(logPath, 32<<20)
	if err := checkOwnedDirs(cfg.StateDir, cfg.RunDir); err != nil {
		fmt.Fprintln(stderr, "bangerd:", err)
		return 1
	}
	// Never through a symlink: a link planted at the log's path would make
	// the daemon append to a file of the link maker's choosing.
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND|unix.O_NOFOLLOW, 0o640)
	if err != nil {
		fmt.Fprintln(stderr, "bangerd:", err)
		return 1
	}
	defer lf.Close()
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.ToLower(cfg.LogLevel))); err != nil {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(io.MultiWriter(stderr, lf), &slog.HandlerOptions{Level: level}))

	deps := testHooks(logger)
	deps.Recover = *recover
	d, err := New(ctx, cfg, deps, logger)
	if err != nil {
		logger.Error("bangerd cannot start", "err", err)
		return 1
	}
	defer d.Close()
	if err := d.Listen(); err != nil {
		logger.Error("bangerd cannot listen", "err", err)
		return 1
	}
	if err := d.Serve(ctx); err != nil {
		logger.Error("bangerd stopped", "err", err)
		return 1
	}
	return 0
}

// rotateLog keeps one previous log: at start, a log over max bytes becomes
// <path>.1 (replacing the older one), so the daemon's log stays bounded
// across restarts.
func rotateLog(path string, max int64) {
	if st, err := os.Stat(path); err == nil && st.Size() > max {
		os.Rename(path, path+".1")
	}
}

// checkOwnedDirs refuses state and run directories that are symlinks, that
// another user owns, or that others may write to: the daemon removes and
// runs what it finds there.
func checkOwnedDirs(dirs ...string) error {
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return err
		}
		st, err := os.Lstat(dir)
		if err != nil {
			return err
		}
		if st.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symlink: give banger a real directory", dir)
		}
		if !st.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
			return fmt.Errorf("%s is owned by uid %d, not by the daemon's uid %d: chown it or choose another directory", dir, sys.Uid, os.Geteuid())
		}
		if st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s is writable by others (mode %v): chmod go-w it", dir, st.Mode().Perm())
		}
	}
	return nil
}
