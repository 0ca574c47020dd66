package download

import (
	"os"

	"golang.org/x/sys/unix"
)

// statFree reports the bytes an unprivileged writer may still use on the
// file system holding dir (an open directory, reached through the agent's
// os.Root, so no path is resolved again).
func statFree(dir *os.File) (int64, error) {
	var st unix.Statfs_t
	raw, err := dir.SyscallConn()
	if err != nil {
		return -1, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) { serr = unix.Fstatfs(int(fd), &st) }); err != nil {
		return -1, err
	}
	if serr != nil {
		return -1, serr
	}
	free := st.Bavail * uint64(st.Bsize)
	if free > 1<<62 {
		free = 1 << 62
	}
	return int64(free), nil
}
