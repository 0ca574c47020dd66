package agent

import "golang.org/x/sys/unix"

// freeBytes is the space an unprivileged writer may still use on the file
// system of dir, -1 when it cannot be read.
func freeBytes(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(min(st.Bavail*uint64(st.Bsize), 1<<62))
}
