package oci

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/banger-dev/banger/internal/image"
	"github.com/banger-dev/banger/internal/system"
)

// converted is an image pulled from the test registry, unpacked and built.
type converted struct {
	img  *Image
	tree string
	out  string
	meta *Metadata
}

// convert pushes img, pulls, unpacks and builds it, logging how long each
// step took.
func convert(t *testing.T, img v1.Image) converted {
	t.Helper()
	reg := newTestRegistry(t)
	reg.push(t, reg.ref("conv:1"), img)
	dir := t.TempDir()
	ctx := context.Background()
	start := time.Now()
	got, err := Pull(ctx, reg.ref("conv:1"), PullOptions{CacheDir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	pulledAt := time.Now()
	tree := filepath.Join(dir, "tree")
	if err := Unpack(ctx, got, tree, UnpackOptions{}); err != nil {
		t.Fatal(err)
	}
	unpackedAt := time.Now()
	out := filepath.Join(dir, "image", "rootfs.ext4")
	os.MkdirAll(filepath.Dir(out), 0o755)
	meta, err := BuildRootfs(ctx, got, tree, out, BuildOptions{Runner: system.ExecRunner{}, DebCache: debCache, Agent: testAgent(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pull %s, unpack %s, rootfs %s (%d layers, %d bytes of blobs, %d unpacked, ext4 %d)",
		pulledAt.Sub(start).Round(time.Millisecond), unpackedAt.Sub(pulledAt).Round(time.Millisecond),
		time.Since(unpackedAt).Round(time.Millisecond), len(got.Layers), got.Size(), meta.UnpackedSize, meta.RootfsSize)
	return converted{got, tree, out, meta}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := system.ExecRunner{}.Run(context.Background(), name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

// busyboxImage is busybox-static from Debian as a two-layer image with a
// user, a file capability and a config that uses ENV, WORKDIR and USER.
func busyboxImage(t *testing.T) v1.Image {
	debs := fetchDebs(t, "busybox-static")
	bb := debLayer(t, debs[0])
	var links []entry
	for _, a := range []string{"sh", "ls", "cat", "id", "echo", "pwd", "env"} {
		links = append(links, entry{name: "bin/" + a, typ: tar.TypeSymlink, link: "busybox"})
	}
	etc := append(links,
		entry{name: "etc/", typ: tar.TypeDir},
		entry{name: "etc/passwd", body: "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"},
		entry{name: "etc/group", body: "root:x:0:\napp:x:1000:\n"},
		entry{name: "home/", typ: tar.TypeDir},
		entry{name: "home/app/", typ: tar.TypeDir, uid: 1000, gid: 1000},
		entry{name: "srv/", typ: tar.TypeDir, uid: 1000, gid: 1000},
		entry{name: "bin/capped", body: "not really a program", mode: 0o755,
			pax: map[string]string{"SCHILY.xattr.security.capability": string(capNetBind)}},
	)
	return testImage(t, "amd64", v1.Config{
		Env:        []string{"PATH=/usr/local/bin:/bin", "GREETING=hello 'quoted' world"},
		WorkingDir: "/srv",
		User:       "app",
		Entrypoint: []string{"/bin/sh", "-c"},
		Cmd:        []string{`echo "default $GREETING"; pwd; id -u; echo "$HOME"`},
	}, bb, gzLayer(t, layerTar(t, etc)))
}

// capNetBind is a VFS_CAP_REVISION_2 security.capability value granting
// cap_net_bind_service (bit 10) permitted and effective.
var capNetBind = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func TestBuildRootfsBusybox(t *testing.T) {
	requireRoot(t)
	c := convert(t, busyboxImage(t))

	// The filesystem is clean and holds the guest side, root-owned.
	run(t, "e2fsck", "-fn", c.out)
	stat := run(t, "debugfs", "-R", "stat /.banger/init", c.out)
	for _, want := range []string{"Type: regular", "Mode:  0755", "User:     0   Group:     0"} {
		if !strings.Contains(stat, want) {
			t.Errorf("debugfs stat /.banger/init lacks %q:\n%s", want, stat)
		}
	}
	if stat := run(t, "debugfs", "-R", "stat /.banger/agent", c.out); !strings.Contains(stat, "Mode:  0755") || !strings.Contains(stat, "User:     0   Group:     0") {
		t.Errorf("the guest agent is not /.banger/agent, root's, mode 0755:\n%s", stat)
	}
	for _, p := range []string{"/.banger/bin/busybox", "/.banger/lib/ld-linux-x86-64.so.2", "/.banger/libexec/dropbear", "/root/.ssh", "/work", "/proc"} {
		if out := run(t, "debugfs", "-R", "stat "+p, c.out); !strings.Contains(out, "User:     0   Group:     0") {
			t.Errorf("%s missing or not root-owned in the ext4:\n%s", p, out)
		}
	}
	// The file capability survived layer, unpack and mkfs.
	ea := run(t, "debugfs", "-R", "ea_get -x /bin/capped security.capability", c.out)
	if !strings.Contains(strings.ReplaceAll(ea, " ", ""), "0100000200040000") {
		t.Errorf("security.capability in the ext4 = %q, want %x", ea, capNetBind)
	}
	// The image's own files are there as they were.
	if out := run(t, "debugfs", "-R", "stat /srv", c.out); !strings.Contains(out, "User:  1000   Group:  1000") {
		t.Errorf("/srv lost its owner:\n%s", out)
	}

	// Metadata, next to the rootfs.
	m, err := ReadMetadata(filepath.Dir(c.out))
	if err != nil {
		t.Fatal(err)
	}
	if m.Digest != c.img.Digest || len(m.Layers) != 2 || m.Layers[1].Digest != c.img.Layers[1].Digest ||
		m.Config.User != "app" || m.Config.WorkingDir != "/srv" || m.BootArgs != BootArgs || m.Platform != "linux/amd64" ||
		m.Size != c.img.Size() || m.RootfsSize == 0 || !strings.HasSuffix(m.Source, "/conv:1") {
		t.Errorf("metadata = %+v", m)
	}
	if BootArgs != "quiet root=/dev/vda banger.init=/.banger/init" {
		t.Errorf("BootArgs = %q", BootArgs)
	}

	// /.banger/run applies the config: the default command as USER app in
	// WORKDIR /srv with ENV; an explicit command too.
	if got := run(t, "chroot", c.tree, RunHelper); got != "default hello 'quoted' world\n/srv\n1000\n/home/app\n" {
		t.Errorf("default command printed %q", got)
	}
	if got := run(t, "chroot", c.tree, RunHelper, "--", "sh", "-c", `echo "$GREETING|$PWD|$(id -u):$(id -g)"`); got != "hello 'quoted' world|/srv|1000:1000\n" {
		t.Errorf("explicit command printed %q", got)
	}
	// --user overrides USER (a name or a uid; builtins too); a user the
	// image lacks is refused with 126; --login runs the user's shell.
	if got := run(t, "chroot", c.tree, RunHelper, "--user", "root", "--", "sh", "-c", `echo "$(id -u) $HOME $PWD"`); got != "0 /root /srv\n" {
		t.Errorf("--user root printed %q", got)
	}
	if got := run(t, "chroot", c.tree, RunHelper, "--user", "1000", "--", "id", "-un"); got != "app\n" {
		t.Errorf("--user 1000 printed %q", got)
	}
	if got := run(t, "chroot", c.tree, RunHelper, "--user", "app", "--", "echo", "builtin"); got != "builtin\n" {
		t.Errorf("echo as app printed %q", got)
	}
	_, err = system.ExecRunner{}.Run(context.Background(), "chroot", c.tree, RunHelper, "--user", "nosuch", "--", "true")
	var ce *system.CommandError
	if !errors.As(err, &ce) || ce.ExitCode != 126 || !strings.Contains(ce.Stderr, `no user "nosuch" in the guest's /etc/passwd`) {
		t.Errorf("--user nosuch: %v, want exit 126 and the reason", err)
	}
	if got := run(t, "chroot", c.tree, "/.banger/bin/sh", "-c", `echo 'echo "$0 $(id -u) $HOME $GREETING"' | `+RunHelper+" --user app --login"); got != "/bin/sh 1000 /home/app hello 'quoted' world\n" {
		t.Errorf("login shell of app printed %q", got)
	}

	// dropbear and sftp-server run through their own loader in an image
	// that has no libc at all.
	if _, err := os.Stat(filepath.Join(c.tree, "lib/x86_64-linux-gnu/libc.so.6")); err == nil {
		t.Fatal("the busybox image unexpectedly has a libc")
	}
	run(t, "chroot", c.tree, "/.banger/bin/dropbearkey", "-t", "ed25519", "-f", "/tmp/k")
	if pub := run(t, "chroot", c.tree, "/.banger/bin/dropbearkey", "-y", "-f", "/tmp/k"); !strings.Contains(pub, "ssh-ed25519 AAAA") {
		t.Errorf("dropbearkey -y printed %q", pub)
	}
	if v := run(t, "chroot", c.tree, "/.banger/bin/sh", "-c", "/.banger/bin/dropbear -V 2>&1; true"); !strings.Contains(v, "Dropbear v") {
		t.Errorf("dropbear -V printed %q", v)
	}
	_, serr := system.ExecRunner{}.Run(context.Background(), "chroot", c.tree, "/.banger/sftp-server", "-h")
	if serr == nil || !strings.Contains(serr.Error(), "usage: sftp-server") {
		t.Errorf("sftp-server -h: %v", serr)
	}
	db, _ := os.ReadFile(filepath.Join(c.tree, ".banger/libexec/dropbear"))
	if !bytes.Contains(db, []byte("/.banger/sftp-server\x00")) || bytes.Contains(db, []byte("/usr/lib/sftp-server")) {
		t.Error("dropbear's sftp-server path is not /.banger/sftp-server")
	}
	// root's shell /bin/sh exists: passwd stays, /etc/shells (missing) is
	// made to list it for this boot.
	passwd, shells := sshUser(t, c.tree)
	if !strings.HasPrefix(passwd, "root:x:0:0:root:/root:/bin/sh\napp:") || shells != "/bin/sh\n" {
		t.Errorf("after ssh-user: passwd %q, shells %q", passwd, shells)
	}
	// Every script parses with the guest's own shell.
	for _, s := range []string{"init", "halt", "run", "ssh-user", "sftp-server", "guest-setup", "image.sh", "bin/dropbear", "acpi/PWRF/00000080"} {
		run(t, "chroot", c.tree, "/.banger/bin/sh", "-n", "/.banger/"+s)
	}
}

// pythonPackages is python3.11-minimal with its dependency closure, from
// apt-cache (Depends and Pre-Depends, recursively).
func pythonPackages(t *testing.T) []string {
	out, err := system.ExecRunner{}.Run(context.Background(), "apt-cache", "depends", "--recurse", "--no-recommends",
		"--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", "python3.11-minimal")
	if err != nil {
		t.Skipf("apt-cache cannot resolve python3.11-minimal: %v", err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, " ") || strings.HasPrefix(l, "<") {
			continue
		}
		names = append(names, strings.TrimSpace(l))
	}
	if len(names) < 3 {
		t.Skipf("apt-cache gave only %v", names)
	}
	return names
}

func TestBuildRootfsPython(t *testing.T) {
	requireRoot(t)
	names := pythonPackages(t)
	debs := fetchDebs(t, names...)
	var layers []v1.Layer
	for _, d := range debs {
		layers = append(layers, debLayer(t, d))
	}
	layers = append(layers, gzLayer(t, layerTar(t, []entry{
		{name: "usr/bin/python3", typ: tar.TypeSymlink, link: "python3.11"},
	})))
	img := testImage(t, "amd64", v1.Config{
		Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"},
		Cmd: []string{"python3", "-c", "import os; print(os.environ['PYTHONDONTWRITEBYTECODE'], 6*7)"},
	}, layers...)
	c := convert(t, img)
	t.Logf("python image: %d packages: %s", len(names), strings.Join(names, " "))

	if got := run(t, "chroot", c.tree, "/usr/bin/python3", "-c", "print(6*7)"); got != "42\n" {
		t.Errorf("python3 printed %q, want 42", got)
	}
	if got := run(t, "chroot", c.tree, RunHelper); got != "1 42\n" {
		t.Errorf("default command printed %q", got)
	}
	if got := run(t, "chroot", c.tree, RunHelper, "--", "python3", "-c", "print(6*7)"); got != "42\n" {
		t.Errorf("python3 through %s printed %q", RunHelper, got)
	}
	run(t, "e2fsck", "-fn", c.out)
	if out := run(t, "debugfs", "-R", "stat /usr/bin/python3.11", c.out); !strings.Contains(out, "Type: regular") {
		t.Errorf("python3.11 not in the ext4:\n%s", out)
	}
}

func TestBuildRootfsNoShell(t *testing.T) {
	requireRoot(t)
	img := testImage(t, "amd64", v1.Config{Entrypoint: []string{"/app/data"}},
		gzLayer(t, layerTar(t, []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/data", body: "only data"}})))
	c := convert(t, img)
	for _, p := range []string{"bin/sh", "etc/passwd", "usr"} {
		if _, err := os.Lstat(filepath.Join(c.tree, p)); err == nil {
			t.Errorf("%s exists in a no-shell image", p)
		}
	}
	// The mount points and per-VM directories were made, and said so.
	for _, p := range []string{"proc", "sys", "dev", "run", "tmp", "work", "etc", "root/.ssh"} {
		if st, err := os.Lstat(filepath.Join(c.tree, p)); err != nil || !st.IsDir() {
			t.Errorf("%s missing: %v", p, err)
		}
	}
	if len(c.meta.Notes) == 0 || !strings.Contains(c.meta.Notes[len(c.meta.Notes)-1], "/root/.ssh") {
		t.Errorf("notes = %q", c.meta.Notes)
	}
	// dropbear gets a root whose shell is busybox's, for this boot only.
	passwd, shells := sshUser(t, c.tree)
	if passwd != "root:x:0:0:root:/root:/.banger/bin/sh\n" || shells != "/.banger/bin/sh\n" {
		t.Errorf("after ssh-user: passwd %q, shells %q", passwd, shells)
	}
	for _, f := range []string{"etc/passwd", "etc/shells"} {
		if st, err := os.Lstat(filepath.Join(c.tree, f)); err != nil || st.Size() != 0 {
			t.Errorf("%s on disk should be an empty mount point: %v", f, err)
		}
	}
	// An image whose root shell is missing keeps its other users.
	os.WriteFile(filepath.Join(c.tree, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\napp:x:1:1::/:/bin/false\n"), 0o644)
	os.WriteFile(filepath.Join(c.tree, "etc/shells"), []byte("/bin/bash\n"), 0o644)
	passwd, shells = sshUser(t, c.tree)
	if passwd != "root:x:0:0:root:/root:/.banger/bin/sh\napp:x:1:1::/:/bin/false\n" || shells != "/bin/bash\n/.banger/bin/sh\n" {
		t.Errorf("after ssh-user: passwd %q, shells %q", passwd, shells)
	}
	// Commands the image lacks come from busybox under /.banger.
	if got := run(t, "chroot", c.tree, RunHelper, "--", "cat", "/app/data"); got != "only data" {
		t.Errorf("cat printed %q", got)
	}
	run(t, "e2fsck", "-fn", c.out)
}

// sshUser runs /.banger/ssh-user in a private mount namespace chrooted
// into tree and returns /etc/passwd and /etc/shells as it left them.
func sshUser(t *testing.T, tree string) (passwd, shells string) {
	t.Helper()
	out := run(t, "unshare", "--mount", "--propagation", "private", "chroot", tree, "/.banger/bin/sh", "-c",
		"export PATH=/.banger/bin; mount -t tmpfs tmpfs /run && /.banger/ssh-user && cat /etc/passwd && echo --- && cat /etc/shells")
	passwd, shells, _ = strings.Cut(out, "---\n")
	return passwd, shells
}

func TestBuildRootfsRefusesImageWithItsOwnGuestDir(t *testing.T) {
	requireRoot(t)
	tree := t.TempDir()
	os.Mkdir(filepath.Join(tree, ".banger"), 0o755)
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	_, err := BuildRootfs(context.Background(), &Image{Source: "x"}, tree, out, BuildOptions{Runner: system.ExecRunner{}, DebCache: debCache})
	if err == nil || !strings.Contains(err.Error(), "its own /.banger") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("rootfs written anyway")
	}
}

func TestGuestSetupNetworkPart(t *testing.T) {
	s, err := guestSetupNetworkPart()
	if err != nil {
		t.Fatal(err)
	}
	text := string(s)
	if !strings.Contains(text, "ip=*:*)") || !strings.Contains(text, "mount -t ext4 /dev/vdb /work") {
		t.Error("network or work-disk part missing")
	}
	if strings.Contains(text, "dropbearkey") || strings.Contains(text, "sshd") || !strings.HasSuffix(text, "\nexit 0\n") {
		t.Errorf("SSH part not cut off:\n%s", text)
	}
}

func TestImageScriptQuotesAndDefaults(t *testing.T) {
	img := &Image{Source: "r", Digest: "sha256:00", Config: Config{
		Env:        []string{"A=it's \"so\" $HOME `x`", "BAD-NAME=1", "EMPTY="},
		WorkingDir: "/w d",
		User:       "1000:1000",
		Entrypoint: []string{"/bin/echo", "a b"},
		Cmd:        []string{"c'd"},
	}}
	s, skipped := imageScript(img)
	if len(skipped) != 1 || skipped[0] != "BAD-NAME" {
		t.Errorf("skipped = %v", skipped)
	}
	f := filepath.Join(t.TempDir(), "image.sh")
	os.WriteFile(f, s, 0o644)
	// Sourced by sh with no arguments: the default command; with
	// arguments: those.
	got := run(t, "sh", "-c", `. "$0"; printf '%s|' "$A" "$EMPTY" "$PATH" "$banger_workdir" "$banger_user" "$#" "$@"`, f)
	want := "it's \"so\" $HOME `x`||" + defaultPath + "|/w d|1000:1000|3|/bin/echo|a b|c'd|"
	if got != want {
		t.Errorf("sourced image.sh gave\n%s\nwant\n%s", got, want)
	}
	got = run(t, "sh", "-c", `. "$0"; printf '%s|' "$#" "$@"`, f, "mine")
	if got != "1|mine|" {
		t.Errorf("with a command: %q", got)
	}
}

func TestGuestScriptsParse(t *testing.T) {
	dir := t.TempDir()
	files := map[string][]byte{}
	fsys := image.OCIGuestFiles()
	for _, n := range []string{"init", "halt", "run", "ssh-user", "sftp-server", "bin/dropbear", "bin/dropbearkey", "acpi/PWRF/00000080"} {
		data, err := readFS(fsys, n)
		if err != nil {
			t.Fatalf("guest file %s: %v", n, err)
		}
		if !bytes.HasPrefix(data, []byte("#!/.banger/bin/sh\n")) {
			t.Errorf("%s does not start with #!/.banger/bin/sh", n)
		}
		files[n] = data
	}
	for n, data := range files {
		p := filepath.Join(dir, strings.ReplaceAll(n, "/", "_"))
		os.WriteFile(p, data, 0o644)
		run(t, "sh", "-n", p)
	}
	init := string(files["init"])
	for _, want := range []string{"rcS done", "banger-hostkey: ", "/.banger/guest-setup", "/.banger/ssh-user", "dropbear -F -E -s -r $run_key", "run_key=/run/banger/dropbear_ed25519_host_key", "/.banger/agent", "wait $!"} {
		if !strings.Contains(init, want) {
			t.Errorf("init lacks %q", want)
		}
	}
}

// TestGuestSSHInNoShellImage serves SSH from an image that has no shell,
// no libc and no SSH server: /.banger's dropbear runs chrooted into the
// converted tree (private mount namespace, listening on 127.0.0.1 only),
// and the test logs in as root with a key, runs commands through the
// busybox shell and /.banger/run, and uses SFTP through the patched path.
func TestGuestSSHInNoShellImage(t *testing.T) {
	requireRoot(t)
	img := testImage(t, "amd64", v1.Config{Env: []string{"MSG=from the image"}, WorkingDir: "/app"},
		gzLayer(t, layerTar(t, []entry{{name: "app/", typ: tar.TypeDir}, {name: "app/data", body: "only data"}})))
	c := convert(t, img)

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(c.tree, "root/.ssh/authorized_keys"), ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var dropbearErr error
	guest := `export PATH=/.banger/bin
mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp || exit 1
/.banger/ssh-user || exit 1
dropbearkey -t ed25519 -f /run/ed25519 >/dev/null 2>&1 || exit 1
dropbearkey -t ecdsa -s 256 -f /run/ecdsa >/dev/null 2>&1 || exit 1
exec dropbear -F -E -s -r /run/ed25519 -r /run/ecdsa -p ` + addr
	go func() {
		_, err := system.ExecRunner{}.Run(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount --rbind /dev "$0/dev" && mount -t proc proc "$0/proc" && exec chroot "$0" /.banger/bin/sh -c "$1"`, c.tree, guest)
		dropbearErr = err
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 2 * time.Second}
	var client *ssh.Client
	deadline := time.Now().Add(15 * time.Second)
	for {
		client, err = ssh.Dial("tcp", addr, cfg)
		if err == nil {
			break
		}
		select {
		case <-done:
			t.Fatalf("dropbear exited: %v", dropbearErr)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatalf("no SSH on %s: %v (dropbear: %v)", addr, err, dropbearErr)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer client.Close()
	exec := func(cmd string) string {
		t.Helper()
		s, err := client.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		out, err := s.CombinedOutput(cmd)
		if err != nil {
			t.Fatalf("%q: %v: %s", cmd, err, out)
		}
		return string(out)
	}
	// The second session proves dropbear's per-connection re-exec works
	// (it runs the binary directly, through its rewritten interpreter);
	// LD_LIBRARY_PATH of its wrapper does not reach commands.
	if got := exec("id -u; echo $SHELL; echo \"[$LD_LIBRARY_PATH]\""); got != "0\n/.banger/bin/sh\n[]\n" {
		t.Errorf("id -u; echo $SHELL: %q", got)
	}
	// The session's dropbear is the re-executed one ("-2 FD" appended).
	if got := exec("tr '\\0' ' ' </proc/$PPID/cmdline; echo; readlink /proc/$PPID/exe"); !strings.Contains(got, " -2 ") || !strings.HasSuffix(got, "\n/.banger/libexec/dropbear\n") {
		t.Errorf("session parent is %q, want the re-executed /.banger/libexec/dropbear", got)
	}
	if got := exec(RunHelper + ` -- sh -c 'echo "$MSG in $PWD"; cat data'`); got != "from the image in /app\nonly data" {
		t.Errorf("through %s: %q", RunHelper, got)
	}

	sc, err := sftp.NewClient(client)
	if err != nil {
		t.Fatalf("sftp subsystem: %v", err)
	}
	defer sc.Close()
	f, err := sc.Create("/tmp/copied")
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("over sftp"))
	f.Close()
	if got := exec("cat /tmp/copied"); got != "over sftp" {
		t.Errorf("file written over sftp reads %q", got)
	}
	r, err := sc.Open("/app/data")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(r)
	r.Close()
	if string(data) != "only data" {
		t.Errorf("sftp read %q", data)
	}
}

// Every script banger adds runs with /.banger's own shell: the image may
// have no /bin/sh (a guest-setup with "#!/bin/sh" left a shell-less image
// without network).
func TestGuestSetupUsesOwnShell(t *testing.T) {
	s, err := guestSetupNetworkPart()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(s, []byte("#!"+GuestDir+"/bin/sh\n")) {
		t.Fatalf("guest-setup starts %q, want /.banger's shell", s[:min(len(s), 40)])
	}
}

// removeBakedHostKeys removes the image's dropbear host keys (files and
// links, never a link's target), keeps the rest of /etc/dropbear, and
// never looks through a linked /etc or /etc/dropbear.
func TestRemoveBakedHostKeys(t *testing.T) {
	tree := t.TempDir()
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "target_key"), []byte("outside"), 0o600)
	d := filepath.Join(tree, "etc", "dropbear")
	os.MkdirAll(d, 0o755)
	os.WriteFile(filepath.Join(d, "dropbear_ed25519_host_key"), []byte("baked"), 0o600)
	os.WriteFile(filepath.Join(d, "dropbear_rsa_host_key"), []byte("baked"), 0o600)
	os.WriteFile(filepath.Join(d, "config"), []byte("kept"), 0o644)
	os.Symlink(filepath.Join(outside, "target_key"), filepath.Join(d, "dropbear_ecdsa_host_key"))
	got, err := removeBakedHostKeys(tree)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Errorf("removed %q, want the three key entries", got)
	}
	for _, k := range []string{"ed25519", "rsa", "ecdsa"} {
		if _, err := os.Lstat(filepath.Join(d, "dropbear_"+k+"_host_key")); err == nil {
			t.Errorf("the image's %s key is still there", k)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(d, "config")); string(b) != "kept" {
		t.Error("another file in /etc/dropbear was removed")
	}
	if b, _ := os.ReadFile(filepath.Join(outside, "target_key")); string(b) != "outside" {
		t.Error("a linked key's target outside the tree was removed")
	}

	// /etc/dropbear a link out of the tree: not looked into.
	tree2 := t.TempDir()
	os.MkdirAll(filepath.Join(tree2, "etc"), 0o755)
	os.WriteFile(filepath.Join(outside, "dropbear_ed25519_host_key"), []byte("outside"), 0o600)
	os.Symlink(outside, filepath.Join(tree2, "etc", "dropbear"))
	if got, err := removeBakedHostKeys(tree2); err != nil || len(got) != 0 {
		t.Errorf("through a linked /etc/dropbear: removed %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(outside, "dropbear_ed25519_host_key")); err != nil {
		t.Error("a key outside the tree was removed through a link")
	}
	// No /etc at all: nothing to do.
	if got, err := removeBakedHostKeys(t.TempDir()); err != nil || got != nil {
		t.Errorf("empty tree: %q, %v", got, err)
	}
}
