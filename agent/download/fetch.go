package download

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/ferry-dev/ferry/job"
)

// Defaults for Request fields left at zero.
const (
	DefaultCheckpointInterval = time.Second
	DefaultCheckpointBytes    = 64 << 20
)

// Reasons reported in Start.Restarted when bytes already staged had to be
// thrown away.
const (
	RestartNoRangeSupport  = "no-range-support"  // the server answered a Range request with 200
	RestartValidatorChange = "validator-changed" // the resource changed (ETag/Last-Modified/size)
	RestartBadContentRange = "bad-content-range" // a 206 whose Content-Range did not match the request
	RestartStateMismatch   = "state-mismatch"    // the sidecar was corrupt, for another URL, or claimed more than the file holds
)

// Request is one file to fetch.
type Request struct {
	URL string

	// Root is the agent's root directory; every file operation goes
	// through it, so nothing is written outside it (symbolic links that
	// lead out are not followed).
	Root *os.Root

	// TempName is the staging file, relative to Root, e.g.
	// "dl/.x.bin.ferry-<job>-0.part". Absolute names and names with a
	// ".." element are refused. Its sidecar is TempName+".state" (and
	// TempName+".state.tmp" while it is being replaced).
	TempName string

	// Client should come from NewClient (nil: a NewClient(ClientOptions{})
	// for this call only).
	Client *http.Client

	// Header holds extra request headers (BITS custom headers). They are
	// never logged or put in descriptions.
	Header http.Header

	// A checkpoint (fsync of the data, then of the sidecar, then
	// OnCheckpoint) is taken when CheckpointInterval has passed or
	// CheckpointBytes have arrived since the previous one, whichever comes
	// first. Defaults: DefaultCheckpointInterval, DefaultCheckpointBytes.
	CheckpointInterval time.Duration
	CheckpointBytes    int64

	// OnTransferring is called once the response headers are accepted,
	// before any body byte is written (again if the server later forces a
	// restart from zero). It is not called when nothing is left to
	// transfer. An error aborts Fetch, which returns it wrapped.
	OnTransferring func(Start) error

	// OnCheckpoint is called after the data and the sidecar are fsynced.
	// An error (e.g. the lease was lost) aborts the transfer, leaving it
	// resumable; Fetch returns the error wrapped.
	OnCheckpoint func(Checkpoint) error

	Log zerolog.Logger
}

// Start describes the response the transfer continues with.
type Start struct {
	Offset    int64  // first byte this response carries (bytes already staged)
	Total     int64  // size of the file, -1 unknown
	Restarted string // "" or one of the Restart* reasons
}

// Checkpoint reports durable progress: Bytes of the file are fsynced and
// recorded in the sidecar.
type Checkpoint struct {
	Bytes, Total int64 // Total -1 unknown
}

// Result is a completely staged file.
type Result struct {
	Bytes        int64
	SHA256       string // hex
	ETag         string
	LastModified string
	Total        int64 // == Bytes
}

// copyBufSize is the read/write unit: large enough that write(2) and
// hashing are not per-TLS-record, small enough to keep memory constant.
const copyBufSize = 256 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Fetch downloads r.URL into r.TempName under r.Root, resuming from the
// staged bytes when the sidecar allows it. See the package documentation for
// the staging invariant.
//
// It returns a *Failure for transfer, server and local file errors, the
// hook's error (wrapped) when a hook fails, and ctx.Err() (wrapped) when ctx
// ends. In every case what was written is left resumable.
func Fetch(ctx context.Context, r Request) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, fmt.Errorf("download: %w", err)
	}
	if r.CheckpointInterval <= 0 {
		r.CheckpointInterval = DefaultCheckpointInterval
	}
	if r.CheckpointBytes <= 0 {
		r.CheckpointBytes = DefaultCheckpointBytes
	}
	u, f := checkURL(r.URL)
	if f != nil {
		return Result{}, f
	}
	if r.Root == nil {
		return Result{}, fatal(job.ContextLocalFile, job.E_INVALIDARG, nil, "no root directory was given for the staged file")
	}
	if err := checkName(r.TempName); err != nil {
		return Result{}, classifyLocal(err, "stage the file")
	}
	if r.Client == nil {
		r.Client = NewClient(ClientOptions{})
		defer r.Client.CloseIdleConnections()
	}
	// Record what the client-certificate callback answers, for
	// classifying refusals precisely.
	ctx = withCertTrace(ctx, &certTrace{})
	ft := &fetcher{
		r:   r,
		log: r.Log.With().Str("url", redactURL(u)).Str("temp", r.TempName).Logger(),
	}
	defer ft.close()
	if f := ft.open(); f != nil {
		return Result{}, f
	}
	if ft.st.Complete {
		ft.log.Debug().Int64("bytes", ft.pos).Msg("already staged, nothing to fetch")
		return ft.result(), nil
	}
	return ft.transfer(ctx)
}

// Discard removes a staged file and its sidecar (Cancel). Files that do not
// exist are not an error.
func Discard(root *os.Root, tempName string) error {
	if err := checkName(tempName); err != nil {
		return classifyLocal(err, "discard the staged file")
	}
	var errs []error
	// Sidecar first: a temporary file without a sidecar is never trusted.
	for _, n := range []string{stateName(tempName), stateName(tempName) + ".tmp", tempName} {
		if err := root.Remove(n); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return classifyLocal(errors.Join(errs...), "discard the staged file")
	}
	return nil
}

func checkURL(raw string) (*url.URL, *Failure) {
	const rf = job.ContextRemoteFile
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // ue's message repeats the URL, which may hold a token
		}
		return nil, fatal(rf, job.ERROR_WINHTTP_INVALID_URL, err, "the URL cannot be parsed: %s", err.Error())
	}
	switch u.Scheme {
	case "http", "https":
	case "":
		return nil, fatal(rf, job.ERROR_WINHTTP_INVALID_URL, nil, "the URL %q has no scheme; use http:// or https://", redactURL(u))
	default:
		return nil, fatal(rf, job.ERROR_WINHTTP_UNRECOGNIZED_SCHEME, nil, "the URL scheme %q is not supported; use http or https", u.Scheme)
	}
	if u.Opaque != "" || u.Hostname() == "" {
		return nil, fatal(rf, job.ERROR_WINHTTP_INVALID_URL, nil, "the URL %q has no host", redactURL(u))
	}
	return u, nil
}

// fetcher is one Fetch call.
type fetcher struct {
	r   Request
	log zerolog.Logger

	dir  *os.File // TempName's directory, for fsync after renames
	file *os.File // the staging file, positioned at pos

	st  state     // as last saved (st.Offset is durable) plus validators of the current response
	h   hash.Hash // over the first pos bytes
	pos int64     // bytes in the file (durable or not)

	restarted string // for the next Start
	started   bool   // OnTransferring was called for the current run from restarted

	lastCP  time.Time
	sinceCP int64
}

func (ft *fetcher) close() {
	if ft.file != nil {
		ft.file.Close()
	}
	if ft.dir != nil {
		ft.dir.Close()
	}
}

// open prepares the staging file: it loads the sidecar, decides whether its
// bytes can be trusted, and truncates the file to the trusted prefix.
func (ft *fetcher) open() *Failure {
	root, name := ft.r.Root, ft.r.TempName
	dir := filepath.Dir(name)
	if dir != "." {
		if err := root.MkdirAll(dir, 0o755); err != nil {
			return classifyLocal(err, "create the staging directory")
		}
	}
	d, err := root.Open(dir)
	if err != nil {
		return classifyLocal(err, "open the staging directory")
	}
	ft.dir = d
	st, h, found, lerr := loadState(root, name)
	if lerr != nil && !found {
		return classifyLocal(lerr, "read the staging state")
	}
	f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return classifyLocal(err, "open the temporary file")
	}
	ft.file = f
	fi, err := f.Stat()
	if err != nil {
		return classifyLocal(err, "inspect the temporary file")
	}

	usable := found && lerr == nil
	switch {
	case !found:
	case lerr != nil:
		ft.log.Debug().Err(lerr).Msg("staging state unusable; starting from zero")
	case st.URL != ft.r.URL:
		ft.log.Debug().Msg("staging state is for another URL; starting from zero")
		usable = false
	case fi.Size() < st.Offset, st.Complete && fi.Size() != st.Offset:
		ft.log.Debug().Int64("size", fi.Size()).Int64("offset", st.Offset).Msg("temporary file does not match its state; starting from zero")
		usable = false
	}
	if !usable {
		if found {
			return ft.reset(RestartStateMismatch)
		}
		ft.st, ft.h = state{URL: ft.r.URL, Total: -1}, sha256.New()
		return ft.truncate(0)
	}
	ft.st, ft.h, ft.pos = st, h, st.Offset
	if st.Offset > 0 && !st.Complete {
		ft.log.Debug().Int64("offset", st.Offset).Int64("total", st.Total).Msg("resuming")
	}
	// Bytes past the durable offset were never claimed: drop them.
	return ft.truncate(st.Offset)
}

func (ft *fetcher) truncate(n int64) *Failure {
	if err := ft.file.Truncate(n); err != nil {
		return classifyLocal(err, "truncate the temporary file")
	}
	if _, err := ft.file.Seek(n, io.SeekStart); err != nil {
		return classifyLocal(err, "seek in the temporary file")
	}
	ft.pos = n
	return nil
}

// reset throws the staged bytes away. The sidecar is rewritten first, so it
// never claims bytes the file no longer holds.
func (ft *fetcher) reset(reason string) *Failure {
	ft.log.Debug().Str("reason", reason).Int64("discarded", ft.pos).Msg("restarting from zero")
	ft.restarted, ft.started = reason, false
	ft.st, ft.h = state{URL: ft.r.URL, Total: -1}, sha256.New()
	if err := saveState(ft.r.Root, ft.dir, ft.r.TempName, ft.st, ft.h); err != nil {
		return classifyLocal(err, "write the staging state")
	}
	return ft.truncate(0)
}

func (ft *fetcher) result() Result {
	return Result{
		Bytes:        ft.pos,
		SHA256:       hex.EncodeToString(ft.h.Sum(nil)),
		ETag:         ft.st.ETag,
		LastModified: ft.st.LastModified,
		Total:        ft.pos,
	}
}

// action is what to do with a response.
type action int

const (
	actStream action = iota // write its body
	actDone                 // nothing left to fetch
	actAgain                // the staged bytes were reset; ask again
)

func (ft *fetcher) transfer(ctx context.Context) (Result, error) {
	for {
		resp, sentRange, err := ft.get(ctx)
		if err != nil {
			return Result{}, ft.fail(ctx, err)
		}
		act, end, f := ft.accept(resp, sentRange)
		if f != nil {
			resp.Body.Close()
			return Result{}, ft.fail(ctx, f)
		}
		switch act {
		case actAgain:
			resp.Body.Close()
			continue
		case actDone:
			resp.Body.Close()
		case actStream:
			from := ft.pos
			err := ft.stream(resp, end)
			resp.Body.Close()
			if err != nil {
				return Result{}, ft.fail(ctx, err)
			}
			if ft.st.Total >= 0 && ft.pos < ft.st.Total {
				// The server sent a shorter range than asked for
				// (some cap ranges); ask for the rest.
				if ft.pos == from {
					return Result{}, ft.fail(ctx, fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
						"the server sent an empty range at offset %d of %d", ft.pos, ft.st.Total))
				}
				continue
			}
		}
		return ft.finish()
	}
}

// get sends the request for the bytes from pos on.
func (ft *fetcher) get(ctx context.Context) (*http.Response, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ft.r.URL, nil)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, false, fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_INVALID_URL, err, "cannot build the request: %s", err.Error())
	}
	for k, v := range ft.r.Header {
		req.Header[k] = append([]string(nil), v...)
	}
	// Ranges and validators are this package's business.
	req.Header.Del("Range")
	req.Header.Del("If-Range")
	// Explicit identity: even a client not made by NewClient must not
	// ask for gzip and silently inflate (ranges and sizes are of the stored
	// representation).
	req.Header.Set("Accept-Encoding", "identity")
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "ferry-agent")
	}
	sentRange := ft.pos > 0
	if sentRange {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(ft.pos, 10)+"-")
		switch {
		case strings.HasPrefix(ft.st.ETag, `"`): // strong ETag
			req.Header.Set("If-Range", ft.st.ETag)
		case ft.st.LastModified != "":
			req.Header.Set("If-Range", ft.st.LastModified)
		}
	}
	resp, err := ft.r.Client.Do(req)
	return resp, sentRange, err
}

// validatorChanged reports whether the response's validators show a
// different resource than the staged bytes came from.
func (ft *fetcher) validatorChanged(h http.Header) bool {
	if et := h.Get("ETag"); et != "" && ft.st.ETag != "" {
		return strings.TrimPrefix(et, "W/") != strings.TrimPrefix(ft.st.ETag, "W/")
	}
	if lm := h.Get("Last-Modified"); lm != "" && ft.st.LastModified != "" {
		return lm != ft.st.LastModified
	}
	return false
}

// adopt records the response's validators (they describe what is staged
// from now on).
func (ft *fetcher) adopt(h http.Header) {
	if et := h.Get("ETag"); et != "" {
		ft.st.ETag = et
	}
	if lm := h.Get("Last-Modified"); lm != "" {
		ft.st.LastModified = lm
	}
}

// accept decides what to do with a response. end is the offset the body
// should end at, -1 unknown.
func (ft *fetcher) accept(resp *http.Response, sentRange bool) (act action, end int64, f *Failure) {
	h := resp.Header
	switch code := resp.StatusCode; {
	case code == http.StatusPartialContent && sentRange:
		cr, err := parseContentRange(h.Get("Content-Range"))
		switch {
		case err != nil, cr.unsatisfied(), cr.First != ft.pos,
			ft.st.Total >= 0 && cr.Total >= 0 && cr.Total != ft.st.Total,
			resp.ContentLength >= 0 && resp.ContentLength != cr.Last-cr.First+1:
			ft.log.Debug().Str("content_range", printable(h.Get("Content-Range"), 80)).Int64("asked", ft.pos).Msg("unusable Content-Range")
			return actAgain, 0, ft.reset(RestartBadContentRange)
		case ft.validatorChanged(h):
			// The server ignored If-Range.
			return actAgain, 0, ft.reset(RestartValidatorChange)
		}
		if cr.Total >= 0 {
			ft.st.Total = cr.Total
		}
		ft.adopt(h)
		return actStream, cr.Last + 1, nil

	case code == http.StatusPartialContent:
		// Partial content nobody asked for: usable only if it is the whole file.
		cr, err := parseContentRange(h.Get("Content-Range"))
		if err != nil || cr.unsatisfied() || cr.First != 0 || cr.Total < 0 || cr.Last+1 != cr.Total {
			return 0, 0, fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
				"the server sent partial content (%q) to a request for the whole file", printable(h.Get("Content-Range"), 80))
		}
		ft.st.Total = cr.Total
		ft.adopt(h)
		return actStream, cr.Total, nil

	case code == http.StatusOK, code == http.StatusNonAuthoritativeInfo:
		if ft.pos > 0 {
			reason := RestartNoRangeSupport
			if ft.validatorChanged(h) {
				reason = RestartValidatorChange
			}
			if f := ft.reset(reason); f != nil {
				return 0, 0, f
			}
		}
		// A whole new representation: its validators replace any others.
		ft.st.Total = resp.ContentLength // -1 when unknown
		ft.st.ETag, ft.st.LastModified = h.Get("ETag"), h.Get("Last-Modified")
		return actStream, ft.st.Total, nil

	case code == http.StatusRequestedRangeNotSatisfiable && sentRange:
		server := int64(-1)
		if cr, err := parseContentRange(h.Get("Content-Range")); err == nil && cr.unsatisfied() {
			server = cr.Total
		}
		if (ft.st.Total >= 0 && ft.pos == ft.st.Total && (server < 0 || server == ft.pos)) ||
			(ft.st.Total < 0 && server == ft.pos) {
			ft.st.Total = ft.pos
			return actDone, ft.pos, nil
		}
		// Our offset is past the end of what the server has now.
		return actAgain, 0, ft.reset(RestartValidatorChange)
	}
	return 0, 0, httpFailure(resp, time.Now())
}

// stream writes the body from pos on, checkpointing as it goes.
//
// Two fixed buffers alternate: while one chunk is written to the file and
// hashed by a helper goroutine, the next is read from the network. Memory
// stays at two buffers whatever the file size; the helper never outlives
// the call.
func (ft *fetcher) stream(resp *http.Response, end int64) (err error) {
	if !ft.started {
		ft.started = true
		if ft.r.OnTransferring != nil {
			s := Start{Offset: ft.pos, Total: ft.st.Total, Restarted: ft.restarted}
			if err := ft.r.OnTransferring(s); err != nil {
				return &hookError{fmt.Errorf("download: transferring hook: %w", err)}
			}
		}
	}
	b1, b2 := bufPool.Get().(*[]byte), bufPool.Get().(*[]byte)
	defer bufPool.Put(b1)
	defer bufPool.Put(b2)
	cur, spare := *b1, *b2

	// One chunk at most is in flight; its result comes back on done.
	type written struct {
		n   int
		err error
	}
	done := make(chan written, 1)
	var inflight int // bytes handed to the helper, not yet accounted
	wait := func() error {
		if inflight == 0 {
			return nil
		}
		w := <-done
		inflight = 0
		ft.pos += int64(w.n)
		ft.sinceCP += int64(w.n)
		if w.err != nil {
			return classifyLocal(w.err, "write the temporary file")
		}
		return nil
	}
	defer func() {
		if werr := wait(); err == nil {
			err = werr
		}
	}()

	ft.lastCP, ft.sinceCP = time.Now(), 0
	for {
		p := cur
		if end >= 0 {
			// One byte more than expected detects an overlong body.
			if rem := end - ft.pos - int64(inflight) + 1; rem < int64(len(p)) {
				p = p[:rem]
			}
		}
		n, rerr := fill(resp.Body, p)
		if err := wait(); err != nil {
			return err
		}
		if n > 0 {
			if end >= 0 && ft.pos+int64(n) > end {
				return fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
					"the server sent more than the %d bytes it announced", end)
			}
			chunk := p[:n]
			inflight = n
			go func() {
				w, err := ft.file.Write(chunk)
				ft.h.Write(chunk[:w])
				done <- written{w, err}
			}()
			cur, spare = spare, cur
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
		if ft.sinceCP+int64(inflight) >= ft.r.CheckpointBytes || time.Since(ft.lastCP) >= ft.r.CheckpointInterval {
			if err := wait(); err != nil {
				return err
			}
			if err := ft.checkpoint(true); err != nil {
				return err
			}
		}
	}
	if err := wait(); err != nil {
		return err
	}
	if end >= 0 && ft.pos < end {
		return transient(job.ContextGeneralTransport, job.ERROR_WINHTTP_CONNECTION_ERROR, io.ErrUnexpectedEOF,
			"the server ended the response at byte %d of %d", ft.pos, end)
	}
	return nil
}

// fill reads until p is full or the reader fails; err is io.EOF at the end.
func fill(r io.Reader, p []byte) (n int, err error) {
	for n < len(p) && err == nil {
		var k int
		k, err = r.Read(p[n:])
		n += k
	}
	return n, err
}

// hookError carries a hook's error through the classification untouched.
type hookError struct{ err error }

func (e *hookError) Error() string { return e.err.Error() }
func (e *hookError) Unwrap() error { return e.err }

// checkpoint makes pos durable: data first, then the sidecar that claims it.
func (ft *fetcher) checkpoint(hook bool) error {
	if err := ft.file.Sync(); err != nil {
		return classifyLocal(err, "flush the temporary file to disk")
	}
	ft.st.Offset = ft.pos
	if err := saveState(ft.r.Root, ft.dir, ft.r.TempName, ft.st, ft.h); err != nil {
		return classifyLocal(err, "write the staging state")
	}
	ft.lastCP, ft.sinceCP = time.Now(), 0
	if hook && ft.r.OnCheckpoint != nil {
		if err := ft.r.OnCheckpoint(Checkpoint{Bytes: ft.pos, Total: ft.st.Total}); err != nil {
			return &hookError{fmt.Errorf("download: checkpoint hook at %d bytes: %w", ft.pos, err)}
		}
	}
	return nil
}

func (ft *fetcher) finish() (Result, error) {
	if ft.st.Total < 0 {
		ft.st.Total = ft.pos
	}
	ft.st.Complete = true
	if err := ft.checkpoint(false); err != nil {
		ft.st.Complete = false
		return Result{}, err
	}
	ft.log.Debug().Int64("bytes", ft.pos).Msg("staged")
	return ft.result(), nil
}

// fail turns err into what Fetch returns, after making the bytes written so
// far durable (they are kept for the next attempt).
func (ft *fetcher) fail(ctx context.Context, err error) error {
	if ft.pos != ft.st.Offset {
		if serr := ft.checkpoint(false); serr != nil {
			ft.log.Warn().Err(serr).Int64("bytes", ft.pos).Msg("could not save progress after a failed transfer")
		}
	}
	var (
		he *hookError
		f  *Failure
	)
	switch {
	case errors.As(err, &he):
		return he.err
	case ctx.Err() != nil:
		return fmt.Errorf("download: %w", ctx.Err())
	case errors.As(err, &f):
		return f
	}
	tr, _ := ctx.Value(certTraceKey{}).(*certTrace)
	return classifyNetTrace(err, tr)
}
