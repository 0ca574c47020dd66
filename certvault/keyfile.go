package certvault

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// Source of a keyring, as RotateKeyResult.Keyring names it.
const (
	KeyringInFile   = "file"        // LoadKeyringFile: rotations are written back to it
	KeyringInEnv    = "environment" // EnvKEK: the operator changes the variable
	KeyringInMemory = "memory"      // NewKeyring in code: nothing to write to
)

// source names where k came from.
func (k *Keyring) source() string {
	switch {
	case k.file != "":
		return KeyringInFile
	case k.fromEnv:
		return KeyringInEnv
	}
	return KeyringInMemory
}

// withNewVersion returns a copy of k with a fresh random key one version
// above its highest, which becomes active. The copy keeps k's source.
func (k *Keyring) withNewVersion() (*Keyring, error) {
	key := make([]byte, KEKSize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("certvault: new key-encryption key: %w", err)
	}
	defer clear(key)
	keys := map[int][]byte{k.active + 1: key}
	for v, kk := range k.keys {
		keys[v] = kk
	}
	n, err := NewKeyring(keys)
	if err != nil {
		return nil, err
	}
	n.file, n.fromEnv = k.file, k.fromEnv
	return n, nil
}

// withoutVersions returns a copy of k without the versions drop (never the
// active one), keeping k's source.
func (k *Keyring) withoutVersions(drop []int) (*Keyring, error) {
	keys := map[int][]byte{}
	for v, kk := range k.keys {
		if v == k.active || !slices.Contains(drop, v) {
			keys[v] = kk
		}
	}
	n, err := NewKeyring(keys)
	if err != nil {
		return nil, err
	}
	n.file, n.fromEnv = k.file, k.fromEnv
	return n, nil
}

// agrees reports whether every version that both k and o hold is the same
// key in both (compared in constant time).
func (k *Keyring) agrees(o *Keyring) []int {
	var differ []int
	for _, v := range k.Versions() {
		if ok, has := o.keys[v]; has && subtle.ConstantTimeCompare(k.keys[v], ok) != 1 {
			differ = append(differ, v)
		}
	}
	return differ
}

// encodeFile is the keyring in the line form LoadKeyringFile reads. The
// caller clears the result.
func (k *Keyring) encodeFile() []byte {
	var b bytes.Buffer
	b.WriteString("# ferry certvault key-encryption keyring (keep it secret: mode 0600).\n")
	b.WriteString("# Lines are version:base64key; the highest version is active.\n")
	b.WriteString("# Written by `ferry certvault rotate-key`, which rewrites this file (comments are not kept).\n")
	for _, v := range k.Versions() {
		b.WriteString(strconv.Itoa(v))
		b.WriteByte(':')
		enc := make([]byte, base64.StdEncoding.EncodedLen(len(k.keys[v])))
		base64.StdEncoding.Encode(enc, k.keys[v])
		b.Write(enc)
		clear(enc)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// writeKeyringFile replaces the keyring file at path with k, atomically: a
// temporary file (mode 0600) in the same directory is written and synced,
// renamed over the file, and the directory synced, so that a crash leaves
// either the old keyring or the new one, never a mix. A symbolic link is
// followed: the file it points to is replaced.
func writeKeyringFile(path string, k *Keyring) (err error) {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("certvault: write keyring: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("certvault: write keyring: %w", err)
	}
	data := k.encodeFile()
	_, werr := f.Write(data)
	clear(data)
	if werr != nil {
		return fmt.Errorf("certvault: write keyring: %w", werr)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("certvault: write keyring: sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("certvault: write keyring: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("certvault: write keyring: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("certvault: write keyring: sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("certvault: write keyring: sync directory: %w", err)
	}
	return nil
}

// errKeyringBusy: another process holds the keyring file's lock.
var errKeyringBusy = errors.New("certvault: another rotation holds the keyring file's lock")

// lockKeyringFile takes an exclusive lock on <path>.lock (made with mode
// 0600 if needed), so that certvault processes sharing a keyring file
// rotate it one at a time: each reads the file under the lock, so a second
// rotation sees the key the first one wrote instead of writing another key
// under the same version. It does not wait: errKeyringBusy if the lock is
// held.
func lockKeyringFile(path string) (unlock func(), err error) {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	f, err := os.OpenFile(path+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("certvault: lock keyring: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if errors.Is(err, unix.EWOULDBLOCK) {
		f.Close()
		return nil, errKeyringBusy
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("certvault: lock keyring: %w", err)
	}
	return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
}
