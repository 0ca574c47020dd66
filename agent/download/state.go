package download

import (
	"crypto/sha256"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
)

// stateVersion is the sidecar's format version. A sidecar of another version
// is treated as corrupt (the download restarts), never misread. Version 2
// is written only for files with ranges, so that an agent that knows only
// version 1 starts such a file over instead of resuming it as a whole file.
const (
	stateVersion       = 1
	stateVersionRanges = 2
)

// state is the staging sidecar, TempName+".state". Its Offset bytes of the
// temporary file are durable and hash to SHA256State.
type state struct {
	Version      int    `json:"v"`
	URL          string `json:"url"`
	Offset       int64  `json:"offset"`
	SHA256State  []byte `json:"sha256_state"` // crypto/sha256 MarshalBinary, after Offset bytes
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	Total        int64  `json:"total"` // -1 unknown; with ranges, their total
	Complete     bool   `json:"complete,omitempty"`

	Ranges     []Range     `json:"ranges,omitempty"`      // the request's ranges (version 2)
	RemoteSize int64       `json:"remote_size,omitempty"` // the remote file's size as a range response said, 0 unknown
	Header     http.Header `json:"header,omitempty"`      // the kept headers of the last response
	FinalURL   string      `json:"final_url,omitempty"`   // redacted, RedirectAllowReport only
}

func stateName(tempName string) string { return tempName + ".state" }

// checkName refuses staging names that are not plain, canonical relative
// paths inside the root: absolute, empty, ".", with a ".." element, or not in
// filepath.Clean form ("a/../b", "./x", "x/"). os.Root would refuse real
// escapes anyway; refusing early gives a clear error before any request.
func checkName(name string) error {
	if !filepath.IsLocal(name) || name == "." || filepath.Clean(name) != name {
		return fmt.Errorf("%q: %w", name, errNotLocal)
	}
	return nil
}

// loadState reads and validates the sidecar. ok is false when there is none;
// err is non-nil when one exists but cannot be used.
func loadState(root *os.Root, tempName string) (st state, h hash.Hash, ok bool, err error) {
	data, err := root.ReadFile(stateName(tempName))
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, nil, false, nil
	}
	if err != nil {
		return state{}, nil, false, err
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return state{}, nil, true, fmt.Errorf("corrupt state sidecar: %w", err)
	}
	if (st.Version != stateVersion && st.Version != stateVersionRanges) || (st.Version == stateVersionRanges) != (st.Ranges != nil) ||
		st.RemoteSize < 0 || st.Offset < 0 || st.Total < -1 || (st.Total >= 0 && st.Offset > st.Total) {
		return state{}, nil, true, errors.New("state sidecar is inconsistent")
	}
	h = sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(st.SHA256State); err != nil {
		return state{}, nil, true, fmt.Errorf("state sidecar has a bad hash state: %w", err)
	}
	return st, h, true, nil
}

// saveState writes the sidecar atomically: a temporary file, fsync, rename,
// then fsync of the directory so the rename itself is durable.
func saveState(root *os.Root, dir *os.File, tempName string, st state, h hash.Hash) error {
	hs, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return err
	}
	st.Version = stateVersion
	if st.Ranges != nil {
		st.Version = stateVersionRanges
	}
	st.SHA256State = hs
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	final := stateName(tempName)
	tmp := final + ".tmp"
	// 0600: the URL may carry a token in its query.
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := root.Rename(tmp, final); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes renames and creations in dir durable. Windows cannot fsync a
// directory (and does not need to); elsewhere a failure is an error.
func syncDir(dir *os.File) error {
	if dir == nil || runtime.GOOS == "windows" {
		return nil
	}
	return dir.Sync()
}
