package system

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// The re-exec test does not use TestMain (so other tests of this package run
// where they are): the parent test narrows os.Args to the child test and calls
// ReexecInNewNetNS itself; the child test calls it again, which takes the
// in-namespace branch (loopback up, then Run).

const netnsMarkerEnv = "BANGER_TEST_NETNS_MARKER"

type runFunc func() int

func (f runFunc) Run() int { return f() }

func TestReexecInNewNetNS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace")
	}
	if os.Getenv(NetNSEnv) != "" {
		t.Skip("already inside a netns re-exec")
	}
	marker := filepath.Join(t.TempDir(), "child-ran")
	t.Setenv(netnsMarkerEnv, marker)
	saved := os.Args
	os.Args = []string{saved[0], "-test.run=^TestNetNSReexecChild$", "-test.count=1"}
	if testing.Verbose() {
		os.Args = append(os.Args, "-test.v")
	}
	defer func() { os.Args = saved }()

	code := ReexecInNewNetNS(runFunc(func() int {
		t.Error("ReexecInNewNetNS ran m.Run in place as root instead of re-executing")
		return 0
	}))
	if code != 0 {
		t.Fatalf("re-executed child exited %d, want 0", code)
	}
	if b, err := os.ReadFile(marker); err != nil || string(b) != "ok" {
		t.Fatalf("child did not complete its checks: marker %q, %v", b, err)
	}
	if _, err := net.InterfaceByName(childLink); err == nil {
		t.Fatalf("test link %s made in the child is visible in the parent's namespace", childLink)
	}
}

const childLink = "bgrnstest0"

// TestNetNSReexecChild is the child half of TestReexecInNewNetNS.
func TestNetNSReexecChild(t *testing.T) {
	marker := os.Getenv(netnsMarkerEnv)
	if os.Getenv(NetNSEnv) != "1" || marker == "" {
		t.Skip("runs only inside TestReexecInNewNetNS's re-exec")
	}
	code := ReexecInNewNetNS(runFunc(func() int {
		if !InPrivateNetNS() {
			t.Fatal("InPrivateNetNS() = false inside the re-exec")
		}
		self, err := netNSInode("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		parent, err := netNSInode(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()))
		if err != nil {
			t.Fatal(err)
		}
		if self == parent {
			t.Fatal("child shares its parent's network namespace")
		}
		if initNS, err := netNSInode("/proc/1/ns/net"); err == nil && self == initNS {
			t.Fatal("child shares init's network namespace")
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			t.Fatal(err)
		}
		if lo.Flags&net.FlagUp == 0 {
			t.Fatal("loopback is down in the re-exec child")
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: childLink}}); err != nil {
			t.Fatalf("add test link (a bridge: dummy is often not built in): %v", err)
		}
		if _, err := netlink.LinkByName(childLink); err != nil {
			t.Fatalf("test link not visible in child: %v", err)
		}
		// The parent (the host's namespace) must not see it.
		hostNS, err := netns.GetFromPid(os.Getppid())
		if err != nil {
			t.Fatal(err)
		}
		defer hostNS.Close()
		host, err := netlink.NewHandleAt(hostNS)
		if err != nil {
			t.Fatal(err)
		}
		defer host.Close()
		_, err = host.LinkByName(childLink)
		var notFound netlink.LinkNotFoundError
		if !errors.As(err, &notFound) {
			t.Fatalf("host namespace lookup of %s: err = %v, want LinkNotFoundError", childLink, err)
		}
		if err := os.WriteFile(marker, []byte("ok"), 0o600); err != nil {
			t.Fatal(err)
		}
		return 0
	}))
	if code != 0 {
		t.Fatalf("in-namespace branch returned %d", code)
	}
}

func TestReexecInNewNetNSNotRootRunsInPlace(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("checks the unprivileged path; running as root")
	}
	if os.Getenv(NetNSEnv) != "" {
		t.Skip("inside a netns re-exec")
	}
	if got := ReexecInNewNetNS(runFunc(func() int { return 7 })); got != 7 {
		t.Fatalf("ReexecInNewNetNS = %d, want m.Run()'s 7", got)
	}
	if InPrivateNetNS() {
		t.Fatal("InPrivateNetNS() = true without a re-exec")
	}
}

func TestInPrivateNetNSNeedsEnv(t *testing.T) {
	if os.Getenv(NetNSEnv) != "" {
		t.Skip("inside a netns re-exec")
	}
	if InPrivateNetNS() {
		t.Fatalf("InPrivateNetNS() = true with %s unset", NetNSEnv)
	}
	// In the host namespace the env alone is not enough.
	t.Setenv(NetNSEnv, "1")
	if os.Geteuid() == 0 && InPrivateNetNS() {
		t.Fatal("InPrivateNetNS() = true in init's network namespace")
	}
	self, err := netNSInode("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(netNSParentEnv, formatNetNSID(self))
	if InPrivateNetNS() {
		t.Fatal("InPrivateNetNS() = true in the namespace recorded as the parent's")
	}
	// A hand-set env in the host namespace runs in place, without re-exec.
	if got := ReexecInNewNetNS(runFunc(func() int { return 7 })); got != 7 {
		t.Fatalf("ReexecInNewNetNS with a hand-set %s = %d, want m.Run()'s 7", NetNSEnv, got)
	}
}
