package oci

import (
	"io/fs"
	"syscall"
)

// statOwner reads the owner from an os.FileInfo's Sys().
func statOwner(sys any) (uid, gid uint32) {
	st := sys.(*syscall.Stat_t)
	return st.Uid, st.Gid
}

func readFS(fsys fs.FS, name string) ([]byte, error) { return fs.ReadFile(fsys, name) }
