package origintest

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"math/rand/v2"
)

// blockSize is the unit in which Content generates bytes: each block is a
// ChaCha8 stream keyed by the seed and the block's index, so any offset can
// be produced without generating what comes before it.
const blockSize = 64 << 10

// Content is a deterministic pseudo-random file of Size bytes derived from
// Seed. It is never held in memory: ReadAt generates the bytes it is asked
// for. Two Contents with the same Seed agree on every common offset, so a
// "new version" of a file is a Content with another Seed.
type Content struct {
	Seed uint64
	Size int64
}

// ReadAt implements io.ReaderAt.
func (c Content) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if off >= c.Size {
		return 0, io.EOF
	}
	var err error
	if rem := c.Size - off; int64(len(p)) > rem {
		p, err = p[:rem], io.EOF
	}
	n := 0
	var blk [blockSize]byte
	for n < len(p) {
		o := off + int64(n)
		idx, within := o/blockSize, int(o%blockSize)
		if within == 0 && len(p)-n >= blockSize {
			c.block(idx, p[n:n+blockSize])
			n += blockSize
			continue
		}
		c.block(idx, blk[:])
		n += copy(p[n:], blk[within:])
	}
	return n, err
}

// block fills b (blockSize bytes) with block idx.
func (c Content) block(idx int64, b []byte) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], c.Seed)
	binary.LittleEndian.PutUint64(key[8:], uint64(idx))
	key[16] = 0xfe // domain separation from other uses of the seed
	r := rand.NewChaCha8(key)
	r.Read(b)
}

// Reader returns a reader of the whole content, also an io.Seeker (as
// http.ServeContent needs). It generates each block once however small its
// reads are.
func (c Content) Reader() io.ReadSeeker { return &reader{c: c, idx: -1} }

type reader struct {
	c   Content
	off int64
	idx int64 // block held in blk, -1 none
	blk []byte
}

func (r *reader) Read(p []byte) (int, error) {
	if r.off >= r.c.Size {
		return 0, io.EOF
	}
	if rem := r.c.Size - r.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	n := 0
	for n < len(p) {
		idx, within := r.off/blockSize, int(r.off%blockSize)
		if idx != r.idx {
			if r.blk == nil {
				r.blk = make([]byte, blockSize)
			}
			r.c.block(idx, r.blk)
			r.idx = idx
		}
		k := copy(p[n:], r.blk[within:])
		n += k
		r.off += int64(k)
	}
	return n, nil
}

func (r *reader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.c.Size
	default:
		return 0, errors.New("origintest: bad whence")
	}
	if offset < 0 {
		return 0, errors.New("origintest: negative position")
	}
	r.off = offset
	return offset, nil
}

// Bytes returns n bytes from off (for small comparisons in tests).
func (c Content) Bytes(off, n int64) []byte {
	b := make([]byte, n)
	k, _ := c.ReadAt(b, off)
	return b[:k]
}

// SHA256 is the hex SHA-256 of the whole content, computed by streaming.
func (c Content) SHA256() string { return c.RangesSHA256(Range{0, c.Size}) }

// Range is a byte range of a Content: Length bytes from Offset.
type Range struct{ Offset, Length int64 }

// RangesSHA256 is the hex SHA-256 of the given ranges' bytes concatenated in
// order, the way a download with file ranges stages them.
func (c Content) RangesSHA256(rs ...Range) string {
	h := sha256.New()
	for _, r := range rs {
		rd := c.Reader()
		rd.Seek(r.Offset, io.SeekStart)
		io.CopyN(h, rd, r.Length)
	}
	return hex.EncodeToString(h.Sum(nil))
}
