package certvault

import (
	"bytes"
	"errors"
	"testing"
)

func TestEnvelope(t *testing.T) {
	k1 := testKeyring(t, map[int][]byte{1: testKEK(t)})
	ref := storeRef{"spiffe://ferry.test/user/alice", CurrentUser, "MY"}
	sum := [20]byte{1, 2, 3}
	id := ref.identity(sum)
	plaintext := []byte("a PKCS#8 private key, say, of some length")

	s, err := seal(k1, id, plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if s.KEK != 1 || bytes.Contains(s.Ciphertext, plaintext[:16]) || len(s.WrappedDEK) != 12+dekSize+16 {
		t.Fatalf("sealed: %+v", s)
	}
	got, err := open(k1, id, s)
	if err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("open: %q, %v", got, err)
	}
	// Two seals of one key share nothing.
	s2, _ := seal(k1, id, plaintext)
	if bytes.Equal(s.Ciphertext, s2.Ciphertext) || bytes.Equal(s.WrappedDEK, s2.WrappedDEK) {
		t.Error("seal is deterministic")
	}

	// The envelope is bound to its record: another owner, location, store
	// or thumbprint does not open it.
	for name, other := range map[string][]byte{
		"owner":      storeRef{"spiffe://ferry.test/user/mallory", CurrentUser, "MY"}.identity(sum),
		"shared":     storeRef{"", CurrentUser, "MY"}.identity(sum),
		"location":   storeRef{ref.Scope, CurrentService, "MY"}.identity(sum),
		"store":      storeRef{ref.Scope, CurrentUser, "CA"}.identity(sum),
		"thumbprint": ref.identity([20]byte{1, 2, 4}),
		// Length prefixes keep field boundaries: moving a byte from scope
		// to store is another identity.
		"boundary": storeRef{ref.Scope[:len(ref.Scope)-1], CurrentUser, "eMY"}.identity(sum),
	} {
		if _, err := open(k1, other, s); !errors.Is(err, errOpen) {
			t.Errorf("%s: %v, want errOpen", name, err)
		}
	}

	// A wrong KEK of the same version does not open it; a missing version
	// says so.
	wrong := testKeyring(t, map[int][]byte{1: testKEK(t)})
	if _, err := open(wrong, id, s); !errors.Is(err, errOpen) {
		t.Errorf("wrong KEK: %v", err)
	}
	if _, err := open(testKeyring(t, map[int][]byte{2: testKEK(t)}), id, s); err == nil || errors.Is(err, errOpen) {
		t.Errorf("missing version: %v", err)
	}

	// Tampering with either layer fails.
	for name, mod := range map[string]func(*sealedKey){
		"ciphertext": func(s *sealedKey) { s.Ciphertext[len(s.Ciphertext)-1] ^= 1 },
		"wrapped":    func(s *sealedKey) { s.WrappedDEK[0] ^= 1 },
		"relabelled": func(s *sealedKey) { s.KEK = 2 },
		"truncated":  func(s *sealedKey) { s.Ciphertext = s.Ciphertext[:10] },
	} {
		c := sealedKey{KEK: s.KEK, WrappedDEK: bytes.Clone(s.WrappedDEK), Ciphertext: bytes.Clone(s.Ciphertext)}
		mod(&c)
		kr := testKeyring(t, map[int][]byte{1: mustKey(k1, 1), 2: mustKey(k1, 1)})
		if _, err := open(kr, id, c); !errors.Is(err, errOpen) {
			t.Errorf("%s: %v", name, err)
		}
	}

	// Rotation rewraps the data key only; the old KEK can then go.
	k12 := testKeyring(t, map[int][]byte{1: mustKey(k1, 1), 2: testKEK(t)})
	r, err := rewrap(k12, id, s)
	if err != nil {
		t.Fatal(err)
	}
	if r.KEK != 2 || !bytes.Equal(r.Ciphertext, s.Ciphertext) || bytes.Equal(r.WrappedDEK, s.WrappedDEK) {
		t.Fatalf("rewrapped: %+v", r)
	}
	k2, _ := k12.Without(1)
	if got, err := open(k2, id, r); err != nil || !bytes.Equal(got, plaintext) {
		t.Fatalf("open after rotation without the old KEK: %q, %v", got, err)
	}
	if _, err := open(k2, id, s); err == nil {
		t.Error("the old record opens without its KEK")
	}
}

func mustKey(k *Keyring, v int) []byte {
	key, ok := k.key(v)
	if !ok {
		panic("no key")
	}
	return key
}
