package download

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"

	"github.com/ferry-dev/ferry/job"
)

// LengthToEOF as a Range's Length means "to the end of the remote file"
// (BITS's BG_LENGTH_TO_EOF).
const LengthToEOF = -1

// Range is one BITS file range (BG_FILE_RANGE): Length bytes of the remote
// file from Offset, or everything from Offset when Length is LengthToEOF.
type Range struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// checkRanges refuses range lists Fetch cannot carry out. The job model
// validates ranges for the user (sorting, overlaps, limits); this is the
// engine's own defence against a caller that did not.
func checkRanges(rs []Range) *Failure {
	if rs == nil {
		return nil
	}
	if len(rs) == 0 {
		return fatal(job.ContextRemoteFile, job.E_INVALIDARG, nil, "the file has an empty list of ranges")
	}
	for i, r := range rs {
		switch {
		case r.Offset < 0:
			return fatal(job.ContextRemoteFile, job.E_INVALIDARG, nil, "range %d starts at a negative offset (%d)", i, r.Offset)
		case r.Length == 0, r.Length < LengthToEOF:
			return fatal(job.ContextRemoteFile, job.E_INVALIDARG, nil, "range %d has length %d; a length is positive or LengthToEOF", i, r.Length)
		case r.Length > 0 && r.Offset > math.MaxInt64-r.Length:
			return fatal(job.ContextRemoteFile, job.E_INVALIDARG, nil, "range %d ends past the largest possible offset", i)
		}
	}
	return nil
}

// rangePlan maps positions in the staged file (the ranges' bytes
// concatenated in the given order) to offsets of the remote file.
type rangePlan struct {
	ranges     []Range
	remoteSize int64 // size of the remote file, -1 unknown (LengthToEOF ranges depend on it)
}

// length is the number of bytes range i contributes, -1 while unknown.
func (p rangePlan) length(i int) int64 {
	r := p.ranges[i]
	switch {
	case r.Length >= 0:
		return r.Length
	case p.remoteSize >= 0:
		return max(p.remoteSize-r.Offset, 0)
	}
	return -1
}

// total is the staged file's final size, -1 while unknown.
func (p rangePlan) total() int64 {
	var t int64
	for i := range p.ranges {
		l := p.length(i)
		if l < 0 {
			return -1
		}
		if t > math.MaxInt64-l {
			return -1 // checkRanges bounds each range, not their sum; such a file is never fetched
		}
		t += l
	}
	return t
}

// locate returns the range holding staged position pos (the first range
// with bytes left at pos) and the offset within it; i == len(ranges) when
// pos is at or past the end of every range whose length is known.
func (p rangePlan) locate(pos int64) (i int, within int64) {
	var acc int64
	for i := range p.ranges {
		l := p.length(i)
		if l < 0 || pos < acc+l {
			return i, pos - acc
		}
		acc += l
	}
	return len(p.ranges), 0
}

// ask is the remote byte range to request at staged position pos: first and
// last (inclusive; -1 = to the end of the file). ok is false when nothing is
// left to fetch.
func (p rangePlan) ask(pos int64) (first, last int64, ok bool) {
	i, within := p.locate(pos)
	if i == len(p.ranges) {
		return 0, 0, false
	}
	first, last = p.ranges[i].Offset+within, -1
	if l := p.length(i); l >= 0 {
		last = p.ranges[i].Offset + l - 1
	}
	return first, last, true
}

// rangeHeader formats a Range request header for first..last (last -1: to
// the end).
func rangeHeader(first, last int64) string {
	s := "bytes=" + strconv.FormatInt(first, 10) + "-"
	if last >= 0 {
		s += strconv.FormatInt(last, 10)
	}
	return s
}

// pastEOF returns the index of the first range that does not fit in a
// remote file of size bytes, -1 when all fit.
func (p rangePlan) pastEOF(size int64) int {
	for i, r := range p.ranges {
		if r.Offset >= size || r.Length > 0 && r.Offset+r.Length > size {
			return i
		}
	}
	return -1
}

// Limiter throttles the body copy: WaitN blocks until n bytes may be read.
// *rate.Limiter from golang.org/x/time/rate satisfies it. When the limiter
// also has a Burst() int method (rate.Limiter does), Fetch reads at most
// Burst bytes per wait, so WaitN never asks for more than the bucket holds;
// changes made to a rate.Limiter while a transfer runs (SetLimit, SetBurst)
// apply from the next chunk on.
type Limiter interface {
	WaitN(ctx context.Context, n int) error
}

type burster interface{ Burst() int }

// CombineLimiters returns a Limiter that waits on each of ls in turn (nil
// entries are skipped), e.g. the agent's overall limit and its priority
// class's: the transfer's rate never exceeds the smallest of them. Its
// Burst is the smallest burst among those that report one. It returns nil
// when no limiter is left.
func CombineLimiters(ls ...Limiter) Limiter {
	var out multiLimiter
	for _, l := range ls {
		switch l := l.(type) {
		case nil:
		case multiLimiter:
			out = append(out, l...)
		default:
			out = append(out, l)
		}
	}
	switch len(out) {
	case 0:
		return nil
	case 1:
		return out[0]
	}
	return out
}

type multiLimiter []Limiter

func (m multiLimiter) WaitN(ctx context.Context, n int) error {
	for _, l := range m {
		if err := l.WaitN(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// Burst is the smallest positive burst of the limiters that report one, 0
// when none does.
func (m multiLimiter) Burst() int {
	b := 0
	for _, l := range m {
		if lb, ok := l.(burster); ok {
			if v := lb.Burst(); v > 0 && (b == 0 || v < b) {
				b = v
			}
		}
	}
	return b
}

// chunkLimit is the largest read the limiter allows at once, 0 = no limit.
func chunkLimit(l Limiter) int {
	if b, ok := l.(burster); ok {
		return max(b.Burst(), 0)
	}
	return 0
}

// responseHeaderKeys are the response headers Result.Header keeps (BITS's
// HTTP_RESPONSE_HEADERS file property, cut down to what describes the file).
var responseHeaderKeys = []string{"ETag", "Last-Modified", "Content-Length", "Content-Type", "Content-Range", "Content-Encoding"}

// maxKeptHeaderValue bounds each kept header value: the headers go into the
// sidecar and, through the caller, into events.
const maxKeptHeaderValue = 1024

// keptHeader is the first value of each of responseHeaderKeys in h,
// truncated to maxKeptHeaderValue bytes.
func keptHeader(h http.Header) http.Header {
	out := http.Header{}
	for _, k := range responseHeaderKeys {
		if v := h.Get(k); v != "" {
			if len(v) > maxKeptHeaderValue {
				v = v[:maxKeptHeaderValue]
			}
			out[http.CanonicalHeaderKey(k)] = []string{v}
		}
	}
	return out
}

var errLimiterWait = errors.New("bandwidth limiter refused to wait")
