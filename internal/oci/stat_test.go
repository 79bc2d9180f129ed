package oci

import "syscall"

// statOwner reads the owner from an os.FileInfo's Sys().
func statOwner(sys any) (uid, gid uint32) {
	st := sys.(*syscall.Stat_t)
	return st.Uid, st.Gid
}
