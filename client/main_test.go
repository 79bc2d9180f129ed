package client_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-dev/banger/client"
	"github.com/banger-dev/banger/internal/guest"
	"github.com/banger-dev/banger/internal/guest/guesttest"
	"github.com/banger-dev/banger/internal/system"
)

// The tests run the real bangerd, built once per test binary with the
// bangertest tag, with the Firecracker double as VMM and an in-process SSH
// server standing in for every guest, on temporary directories, without
// network. The examples use the daemon TestMain starts; the contract test
// starts its own, since it ends by shutting it down.

var helperDir string // bangerd and fc-double

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "banger-client-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildHelpers(dir); err != nil {
		if errors.Is(err, system.ErrNoTool) {
			// Examples cannot skip one by one: without a daemon nothing here runs.
			fmt.Printf("skipping the client tests: the go toolchain is needed to build bangerd: %v\n", err)
			return 0
		}
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	helperDir = dir
	d, err := startDaemon()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// The examples find their daemon where a user's program would be told
	// of it.
	os.Setenv("BANGER_SOCKET", d.socket)
	code := m.Run()
	if left := d.stop(); left != "" {
		fmt.Fprintln(os.Stderr, left)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func buildHelpers(dir string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, b := range []struct{ pkg, name string }{{"./cmd/bangerd", "bangerd"}, {"./cmd/fc-double", "fc-double"}} {
		if err := system.GoBuild(ctx, b.pkg, filepath.Join(dir, b.name), "bangertest"); err != nil {
			return err
		}
	}
	return nil
}

// testDaemon is one bangerd on private directories, with a stand-in guest
// and a default image ("base") made of a fake kernel and a small ext4 root.
type testDaemon struct {
	state, run, work string
	socket           string
	guestDir         string
	cmd              *system.Command
	cancel           context.CancelFunc
	guest            *guesttest.Server
}

func startDaemon() (_ *testDaemon, err error) {
	d := &testDaemon{}
	if d.work, err = os.MkdirTemp("", "banger-client"); err != nil {
		return nil, err
	}
	// Unix socket paths must stay under 108 bytes.
	if d.run, err = os.MkdirTemp("/tmp", "bc"); err != nil {
		os.RemoveAll(d.work)
		return nil, err
	}
	defer func() {
		if err != nil {
			d.stop()
		}
	}()
	d.state = filepath.Join(d.work, "state")
	d.socket = filepath.Join(d.run, "bangerd.sock")
	d.guestDir = filepath.Join(d.work, "guest")
	if err := os.MkdirAll(filepath.Join(d.guestDir, "sessions"), 0o755); err != nil {
		return nil, err
	}
	// The daemon finds this key where it keeps its own, so the stand-in
	// guest accepts it.
	if err := os.MkdirAll(filepath.Join(d.state, "ssh"), 0o700); err != nil {
		return nil, err
	}
	signer, err := guest.Keygen(filepath.Join(d.state, "ssh", "id_ed25519"))
	if err != nil {
		return nil, err
	}
	if d.guest, err = guesttest.New(guesttest.Options{ClientKey: signer.PublicKey(), Dir: d.guestDir}); err != nil {
		return nil, err
	}
	env := append(os.Environ(),
		"BANGER_STATE_DIR="+d.state,
		"BANGER_RUN_DIR="+d.run,
		"BANGER_SOCKET=",
		"BANGER_NETWORK=off",
		"BANGER_CONFINE=off", // the double's test hooks do not reach into a jail
		"BANGER_CONFIG=/dev/null",
		"BANGER_FIRECRACKER_BIN="+filepath.Join(helperDir, "fc-double"),
		"BANGER_VMM=firecracker",
		"BANGER_GROUP=banger-test-nonexistent",
		"BANGER_ROOT_DISK_METHOD=copy", // never touch the host's loop and dm devices
		"BANGER_LOG_LEVEL=debug",
		"BANGER_TEST_GUEST_ADDR="+d.guest.Addr,
		"BANGER_TEST_GUEST_SESSIONS_ROOT="+filepath.Join(d.guestDir, "sessions"),
	)
	logf, err := os.Create(filepath.Join(d.work, "bangerd.out"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	if d.cmd, err = system.StartCommand(ctx, system.CommandSpec{Argv: []string{filepath.Join(helperDir, "bangerd")}, Env: env, Dir: "/", Stdout: logf, Stderr: logf}); err != nil {
		return nil, err
	}
	c := &client.Client{Socket: d.socket}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := c.Version(ctx)
		cancel()
		if err == nil && v.Ready {
			break
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(filepath.Join(d.work, "bangerd.out"))
			return nil, fmt.Errorf("bangerd did not answer on %s within 30s (%v):\n%s", d.socket, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := writeFakeImage(d.work); err != nil {
		return nil, err
	}
	ctx, cancel = context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.ImportImage(ctx, d.image("base")); err != nil {
		return nil, fmt.Errorf("importing the test image: %w", err)
	}
	return d, nil
}

// image is an import request for the fake image files under another name.
func (d *testDaemon) image(name string) client.ImportImageRequest {
	k := filepath.Join(d.work, "vmlinux")
	return client.ImportImageRequest{Name: name, Kernel: k, VMLinux: k, Rootfs: filepath.Join(d.work, "rootfs.ext4")}
}

// stop shuts the daemon down and removes its directories. It returns what
// a passing run should not have left behind, or "".
func (d *testDaemon) stop() string {
	var left []string
	if d.cmd != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		(&client.Client{Socket: d.socket}).Shutdown(ctx) // the contract test may have done it already
		cancel()
		done := make(chan struct{})
		go func() { d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			left = append(left, "bangerd ignored shutdown and was killed")
			d.cancel()
			<-done
		}
	}
	if d.cancel != nil {
		d.cancel()
	}
	for _, p := range fcDoubles(d.run) {
		p.Kill(5 * time.Second)
		left = append(left, fmt.Sprintf("fc-double pid %d was still running and was killed", p.PID))
	}
	if d.guest != nil {
		d.guest.Close()
	}
	os.RemoveAll(d.run)
	os.RemoveAll(d.work)
	return strings.Join(left, "; ")
}

// fcDoubles lists the live Firecracker doubles whose argv names a path under runDir.
func fcDoubles(runDir string) []system.Process {
	pids, _ := system.ListPIDs()
	var out []system.Process
	for _, pid := range pids {
		argv, err := system.ProcCmdline(pid)
		if err != nil || len(argv) == 0 || filepath.Base(argv[0]) != "fc-double" {
			continue
		}
		for _, a := range argv {
			if strings.HasPrefix(a, runDir+"/") {
				if st, err := system.ProcStartTime(pid); err == nil {
					out = append(out, system.Process{PID: pid, Start: st})
				}
				break
			}
		}
	}
	return out
}

// writeFakeImage writes a fake kernel (an x86-64 ELF header) and a small
// ext4 root filesystem into dir: vmlinux, rootfs.ext4.
func writeFakeImage(dir string) error {
	elf := make([]byte, 4096)
	copy(elf, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1, 0})
	elf[16], elf[18], elf[20] = 2, 0x3e, 1 // ET_EXEC, EM_X86_64, EV_CURRENT
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), elf, 0o644); err != nil {
		return err
	}
	rootfs := filepath.Join(dir, "rootfs.ext4")
	f, err := os.Create(rootfs)
	if err != nil {
		return err
	}
	if err := f.Truncate(32 << 20); err != nil {
		f.Close()
		return err
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := (system.ExecRunner{}).Run(ctx, "mkfs.ext4", "-q", "-F", rootfs); err != nil {
		return fmt.Errorf("making the test root filesystem: %w", err)
	}
	return nil
}
