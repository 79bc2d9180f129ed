package cli

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A guest's archive cannot write outside the destination, neither by a
// path that climbs out nor through a symlink it made earlier.
func TestReadTarRefusesEscapes(t *testing.T) {
	outside := t.TempDir()
	cases := map[string][]tar.Header{
		"symlink then write through it": {
			{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "d/link", Typeflag: tar.TypeSymlink, Linkname: outside},
			{Name: "d/link/evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		},
		"dot-dot": {
			{Name: "d/../../evil", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
		},
	}
	for name, hdrs := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range hdrs {
				tw.WriteHeader(&h)
				if h.Typeflag == tar.TypeReg {
					tw.Write([]byte("evil"))
				}
			}
			tw.Close()
			dst := t.TempDir()
			err := readTar(&buf, dst, "d", "out")
			if err == nil {
				t.Fatal("escaping archive accepted")
			}
			if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
				t.Fatal("a file was written outside the destination")
			}
		})
	}
	// A plain tree with a symlink as a leaf is fine.
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "d/", Typeflag: tar.TypeDir, Mode: 0o750})
	tw.WriteHeader(&tar.Header{Name: "d/f", Typeflag: tar.TypeReg, Mode: 0o640, Size: 2})
	tw.Write([]byte("hi"))
	tw.WriteHeader(&tar.Header{Name: "d/l", Typeflag: tar.TypeSymlink, Linkname: "f"})
	tw.Close()
	dst := t.TempDir()
	if err := readTar(&buf, dst, "d", "out"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dst, "out", "l"))
	st, _ := os.Stat(filepath.Join(dst, "out", "f"))
	if err != nil || string(b) != "hi" || st.Mode().Perm() != 0o640 || !strings.HasSuffix(dst, filepath.Base(dst)) {
		t.Fatalf("tree: %q %v %v", b, err, st.Mode())
	}
}
