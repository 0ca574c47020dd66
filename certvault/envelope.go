package certvault

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
)

// sealedKey is a private key encrypted at rest: an AES-256-GCM envelope. A
// fresh random 32-byte data key (DEK) per record encrypts the PKCS#8 key;
// the key-encryption key (KEK) of version KEK encrypts the DEK. Both use a
// random 96-bit nonce (cipher.NewGCMWithRandomNonce: nonce ‖ ciphertext ‖
// tag), and both are bound to the record's identity by their additional
// data, so a sealed key copied to another record, store, owner or
// thumbprint does not open. Rotation rewraps the DEK only; Ciphertext never
// changes.
type sealedKey struct {
	KEK        int    `json:"kek"`
	WrappedDEK []byte `json:"wrapped_dek"`
	Ciphertext []byte `json:"ciphertext"`
}

const dekSize = 32

// Domain-separation labels of the two layers' additional data.
const (
	aadLabelDEK = "ferry/certvault/dek/v1"
	aadLabelKey = "ferry/certvault/key/v1"
)

// errOpen is the one error of a failed decryption: which layer or why is
// not worth telling an attacker, and the caller knows the record.
var errOpen = errors.New("certvault: the private key cannot be decrypted: wrong key-encryption key or damaged record")

func newGCM(key []byte) (cipher.AEAD, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCMWithRandomNonce(block)
}

// dekAAD binds a wrapped DEK to its record and to the KEK version, so a
// record cannot be relabelled with another version.
func dekAAD(identity []byte, version int) []byte {
	b := make([]byte, 0, len(aadLabelDEK)+4+len(identity))
	b = append(b, aadLabelDEK...)
	b = binary.BigEndian.AppendUint32(b, uint32(version))
	return append(b, identity...)
}

func keyAAD(identity []byte) []byte {
	return append([]byte(aadLabelKey), identity...)
}

// seal encrypts plaintext for the record identity with a new DEK wrapped by
// the keyring's active KEK.
func seal(k *Keyring, identity, plaintext []byte) (sealedKey, error) {
	dek := make(secret, dekSize)
	defer clear(dek)
	if _, err := rand.Read(dek); err != nil {
		return sealedKey{}, fmt.Errorf("certvault: new data key: %w", err)
	}
	data, err := newGCM(dek)
	if err != nil {
		return sealedKey{}, err
	}
	s := sealedKey{Ciphertext: data.Seal(nil, nil, plaintext, keyAAD(identity))}
	if err := wrapDEK(k, identity, dek, &s); err != nil {
		return sealedKey{}, err
	}
	return s, nil
}

func wrapDEK(k *Keyring, identity, dek []byte, s *sealedKey) error {
	v := k.Active()
	kek, _ := k.key(v)
	wrap, err := newGCM(kek)
	if err != nil {
		return err
	}
	s.KEK = v
	s.WrappedDEK = wrap.Seal(nil, nil, dek, dekAAD(identity, v))
	return nil
}

// unwrapDEK returns the record's data key; the caller clears it.
func unwrapDEK(k *Keyring, identity []byte, s sealedKey) (secret, error) {
	kek, ok := k.key(s.KEK)
	if !ok {
		return nil, fmt.Errorf("certvault: the record's key-encryption key version %d is not in the keyring %v", s.KEK, k)
	}
	wrap, err := newGCM(kek)
	if err != nil {
		return nil, err
	}
	dek, err := wrap.Open(nil, nil, s.WrappedDEK, dekAAD(identity, s.KEK))
	if err != nil || len(dek) != dekSize {
		clear(dek)
		return nil, errOpen
	}
	return dek, nil
}

// open decrypts a sealed key; the caller clears the result.
func open(k *Keyring, identity []byte, s sealedKey) (secret, error) {
	dek, err := unwrapDEK(k, identity, s)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	data, err := newGCM(dek)
	if err != nil {
		return nil, err
	}
	pt, err := data.Open(nil, nil, s.Ciphertext, keyAAD(identity))
	if err != nil {
		return nil, errOpen
	}
	return pt, nil
}

// rewrap wraps the record's data key with the active KEK. The ciphertext of
// the private key is unchanged.
func rewrap(k *Keyring, identity []byte, s sealedKey) (sealedKey, error) {
	dek, err := unwrapDEK(k, identity, s)
	if err != nil {
		return sealedKey{}, err
	}
	defer clear(dek)
	out := sealedKey{Ciphertext: s.Ciphertext}
	if err := wrapDEK(k, identity, dek, &out); err != nil {
		return sealedKey{}, err
	}
	return out, nil
}

// identity is the record identity that both layers are bound to:
// length-prefixed scope and store, the location and the SHA-1 thumbprint.
func (r storeRef) identity(sha1 [20]byte) []byte {
	b := make([]byte, 0, 4+len(r.Scope)+1+4+len(r.Store)+len(sha1))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Scope)))
	b = append(b, r.Scope...)
	b = append(b, byte(r.Location))
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.Store)))
	b = append(b, r.Store...)
	return append(b, sha1[:]...)
}
