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
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	RestartStateMismatch   = "state-mismatch"    // the sidecar was corrupt, for another URL or ranges, or claimed more than the file holds
	RestartDynamic         = "dynamic-content"   // a Dynamic request found bytes of an earlier, interrupted attempt
)

// maxChangeRestarts bounds how often one Fetch of ranges starts over
// because the remote file changed; past it the file is changing too often
// to assemble (BG_E_REMOTE_FILE_CHANGED, transient).
const maxChangeRestarts = 2

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

	// Ranges, when not nil, asks for these byte ranges of the remote file
	// only, concatenated in the given order into TempName (BITS
	// AddFileWithRanges). Each range is one request; a server that answers
	// a range with 200 fails with BG_E_INSUFFICIENT_RANGE_SUPPORT, a range
	// past the end of the file with BG_E_INVALID_RANGE, a 206 that is not
	// the asked range (or is multipart/byteranges) with
	// BG_E_INVALID_SERVER_RESPONSE — all fatal. A non-nil empty list, or
	// a range with a negative offset or a length that is neither positive
	// nor LengthToEOF, is refused with E_INVALIDARG (the job model
	// validates ranges properly; this is a defence). Resumable like a
	// whole file: the sidecar records the position in the concatenation.
	Ranges []Range

	// ExpectedSHA256 (hex), when set, is checked after the last byte: a
	// mismatch fails with BG_E_VALIDATION_FAILED (fatal) and discards the
	// staged bytes and sidecar, so a later Fetch starts from zero.
	ExpectedSHA256 string

	// Dynamic is BITS's DYNAMIC_CONTENT: no Range request is ever sent, no
	// Content-Length is needed, and an interrupted transfer starts over
	// (bytes of an earlier attempt are discarded when Fetch opens the
	// file). Dynamic with Ranges is refused with E_INVALIDARG.
	Dynamic bool

	// MaxSize, when > 0, is BITS's MAX_DOWNLOAD_SIZE: the transfer fails
	// with BG_E_TOO_LARGE (fatal) as soon as the size announced by the
	// server (Content-Length, a Content-Range's complete length; with
	// Ranges, the sum of the ranges) exceeds it, or when the body grows
	// past it.
	MaxSize int64

	// Limiter, when set, throttles the body copy (see Limiter and
	// CombineLimiters). An error from it other than the context's ending
	// fails the transfer with BG_E_BLOCKED_BY_POLICY (transient).
	Limiter Limiter

	// MinFreeBytes is kept free on the file system holding TempName: before
	// each response is streamed, when the size is known, Fetch fails with
	// ERROR_DISK_FULL (transient, BG_ERROR_CONTEXT_LOCAL_FILE) if free
	// space is less than the bytes still to write plus MinFreeBytes.
	MinFreeBytes int64

	// freeSpace replaces the file-system query in tests.
	freeSpace func(dir *os.File) (int64, error)

	Log zerolog.Logger
}

// Start describes the response the transfer continues with.
type Start struct {
	Offset    int64  // first byte this response carries (bytes already staged)
	Total     int64  // size of the file (with Ranges: their total), -1 unknown
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
	SHA256       string // hex, of the staged bytes
	ETag         string
	LastModified string
	Total        int64 // == Bytes

	// Header holds, of the last response that carried the file's bytes
	// (not a 416 that only confirmed the end), only ETag, Last-Modified,
	// Content-Length, Content-Type, Content-Range and Content-Encoding
	// (BITS's HTTP_RESPONSE_HEADERS, reduced to what describes the file).
	// It is kept in the sidecar, so it survives restarts.
	Header http.Header

	// FinalURL is where the last request ended after redirects, redacted
	// (no user info, query or fragment), when the client's RedirectPolicy
	// is RedirectAllowReport and a redirect happened; "" otherwise.
	FinalURL string
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
	if f := checkRequest(&r); f != nil {
		return Result{}, f
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
		r:      r,
		log:    r.Log.With().Str("url", redactURL(u)).Str("temp", r.TempName).Logger(),
		redir:  &redirectTrace{},
		ranged: r.Ranges != nil,
	}
	ctx = withRedirectTrace(ctx, ft.redir)
	defer ft.close()
	if err := ft.acquire(ctx); err != nil {
		return Result{}, err
	}
	if f := ft.open(); f != nil {
		return Result{}, f
	}
	if ft.st.Complete {
		ft.log.Debug().Int64("bytes", ft.pos).Msg("already staged, nothing to fetch")
		if f := ft.validate(); f != nil {
			return Result{}, f
		}
		return ft.result(), nil
	}
	return ft.transfer(ctx)
}

// checkRequest refuses option combinations Fetch cannot carry out.
func checkRequest(r *Request) *Failure {
	const rf = job.ContextRemoteFile
	if f := checkRanges(r.Ranges); f != nil {
		return f
	}
	if r.Dynamic && r.Ranges != nil {
		return fatal(rf, job.E_INVALIDARG, nil, "a file with dynamic content cannot have ranges")
	}
	if r.ExpectedSHA256 != "" {
		if b, err := hex.DecodeString(r.ExpectedSHA256); err != nil || len(b) != sha256.Size {
			return fatal(rf, job.E_INVALIDARG, nil, "the expected SHA-256 is not 64 hexadecimal digits")
		}
		r.ExpectedSHA256 = strings.ToLower(r.ExpectedSHA256)
	}
	if r.MaxSize < 0 || r.MinFreeBytes < 0 {
		return fatal(rf, job.E_INVALIDARG, nil, "MaxSize and MinFreeBytes cannot be negative")
	}
	if r.freeSpace == nil {
		r.freeSpace = statFree
	}
	return nil
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

	dir     *os.File // TempName's directory, for fsync after renames
	file    *os.File // the staging file, positioned at pos, locked (see acquire)
	created bool     // this call created the staging file
	saved   bool     // this call wrote the sidecar

	st  state     // as last saved (st.Offset is durable) plus validators of the current response
	h   hash.Hash // over the first pos bytes
	pos int64     // bytes in the file (durable or not)

	restarted string // for the next Start
	started   bool   // OnTransferring was called for the current run from restarted

	ranged  bool // r.Ranges != nil
	changes int  // restarts of ranges because the remote file changed, this call
	redir   *redirectTrace

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

// lockPoll bounds the pause between attempts to lock a staging file that
// another writer holds.
const lockPoll = 100 * time.Millisecond

// acquire opens (or creates) the staging file and locks it for this call:
// one writer at a time per staging file. On storage shared by several agents
// the previous holder of a job may still be writing it — paused or cut off
// past its lease, it learns that it lost the job only at its next write to
// the job's events — and two writers would interleave bytes, truncations and
// sidecars (one could claim bytes the other cut off). So a new holder waits
// here, until ctx ends, for the old one to stop (it unlocks when its Fetch
// returns, the kernel when it dies), and then reads the sidecar the old one
// left. The file locked must still be the one at TempName: a Complete may
// have renamed it, a Cancel removed it, meanwhile.
func (ft *fetcher) acquire(ctx context.Context) error {
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
	waited := false
	for {
		created := true
		f, err := root.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			created = false
			if f, err = root.OpenFile(name, os.O_RDWR, 0o644); errors.Is(err, fs.ErrNotExist) {
				continue // removed between the two opens
			}
		}
		if err != nil {
			return classifyLocal(err, "open the temporary file")
		}
		for {
			ok, err := tryLock(f)
			if err != nil {
				f.Close()
				return classifyLocal(err, "lock the temporary file")
			}
			if ok {
				break
			}
			if !waited {
				waited = true
				ft.log.Info().Msg("another writer holds the staging file (the job's previous holder on shared storage?): waiting for it to let go")
			}
			t := time.NewTimer(lockPoll)
			select {
			case <-ctx.Done():
				t.Stop()
				f.Close()
				return fmt.Errorf("download: waiting for the staging file: %w", ctx.Err())
			case <-t.C:
			}
		}
		fi, ferr := f.Stat()
		pi, perr := root.Lstat(name)
		if ferr == nil && perr == nil && os.SameFile(fi, pi) {
			ft.file, ft.created = f, created
			if waited {
				ft.log.Info().Msg("staging file free")
			}
			return nil
		}
		f.Close() // renamed or removed while we waited: open what is there now
		if ferr != nil {
			return classifyLocal(ferr, "inspect the temporary file")
		}
	}
}

// open prepares the locked staging file: it loads the sidecar, decides
// whether its bytes can be trusted, and truncates the file to the trusted
// prefix.
func (ft *fetcher) open() *Failure {
	root, name := ft.r.Root, ft.r.TempName
	st, h, found, lerr := loadState(root, name)
	if lerr != nil && !found {
		return classifyLocal(lerr, "read the staging state")
	}
	fi, err := ft.file.Stat()
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
	case !slices.Equal(st.Ranges, ft.r.Ranges) || (st.Ranges == nil) != (ft.r.Ranges == nil):
		ft.log.Debug().Msg("staging state is for other ranges; starting from zero")
		usable = false
	case fi.Size() < st.Offset, st.Complete && fi.Size() != st.Offset:
		ft.log.Debug().Int64("size", fi.Size()).Int64("offset", st.Offset).Msg("temporary file does not match its state; starting from zero")
		usable = false
	}
	if !usable {
		if found {
			return ft.reset(RestartStateMismatch)
		}
		ft.st, ft.h = ft.fresh(), sha256.New()
		return ft.truncate(0)
	}
	if ft.r.Dynamic && !st.Complete && st.Offset > 0 {
		// Dynamic content cannot be resumed: the bytes may belong to
		// another rendering.
		return ft.reset(RestartDynamic)
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
	ft.st, ft.h = ft.fresh(), sha256.New()
	ft.saved = true
	if err := saveState(ft.r.Root, ft.dir, ft.r.TempName, ft.st, ft.h); err != nil {
		return classifyLocal(err, "write the staging state")
	}
	return ft.truncate(0)
}

// fresh is the state of an empty staging file.
func (ft *fetcher) fresh() state {
	st := state{URL: ft.r.URL, Total: -1, Ranges: ft.r.Ranges}
	if ft.ranged {
		// Nothing is known of the remote file yet (it may have changed).
		st.Total = rangePlan{ranges: ft.r.Ranges, remoteSize: -1}.total()
	}
	return st
}

// plan is the range plan as far as the state knows the remote file.
func (ft *fetcher) plan() rangePlan {
	rs := int64(-1)
	if ft.st.RemoteSize > 0 {
		rs = ft.st.RemoteSize
	}
	return rangePlan{ranges: ft.r.Ranges, remoteSize: rs}
}

func (ft *fetcher) result() Result {
	return Result{
		Bytes:        ft.pos,
		SHA256:       hex.EncodeToString(ft.h.Sum(nil)),
		ETag:         ft.st.ETag,
		LastModified: ft.st.LastModified,
		Total:        ft.pos,
		Header:       ft.st.Header,
		FinalURL:     ft.st.FinalURL,
	}
}

// validate checks the staged bytes against ExpectedSHA256. On a mismatch it
// discards them and their sidecar: the next Fetch starts from zero.
func (ft *fetcher) validate() *Failure {
	if ft.r.ExpectedSHA256 == "" {
		return nil
	}
	got := hex.EncodeToString(ft.h.Sum(nil))
	if got == ft.r.ExpectedSHA256 {
		return nil
	}
	ft.log.Debug().Str("want", ft.r.ExpectedSHA256).Str("got", got).Msg("content validation failed; discarding the staged file")
	f := fatal(job.ContextRemoteFile, job.BG_E_VALIDATION_FAILED, nil,
		"the downloaded file's SHA-256 is %s, the job expects %s; the %d staged bytes were discarded", got, ft.r.ExpectedSHA256, ft.pos)
	ft.file.Close()
	ft.file = nil
	if err := Discard(ft.r.Root, ft.r.TempName); err != nil {
		f.Description += "; removing them failed: " + err.Error()
		f.Err = err
	}
	ft.st, ft.pos = ft.fresh(), 0
	return f
}

// tooLarge is BG_E_TOO_LARGE when size exceeds MaxSize, else nil.
func (ft *fetcher) tooLarge(size int64, what string) *Failure {
	if ft.r.MaxSize <= 0 || size <= ft.r.MaxSize {
		return nil
	}
	return fatal(job.ContextRemoteFile, job.BG_E_TOO_LARGE, nil,
		"%s is %d bytes, more than the job's maximum download size of %d bytes", what, size, ft.r.MaxSize)
}

// checkSpace fails with ERROR_DISK_FULL when the file system holding the
// staging file has less room than the bytes still to write plus the
// reserve. Unknown sizes check the reserve alone; a file system that cannot
// say is not checked.
func (ft *fetcher) checkSpace() *Failure {
	need := ft.r.MinFreeBytes
	if ft.st.Total >= 0 {
		need += max(ft.st.Total-ft.pos, 0)
	}
	if need <= 0 {
		return nil
	}
	free, err := ft.r.freeSpace(ft.dir)
	if err != nil || free < 0 {
		ft.log.Debug().Err(err).Msg("free space unknown; not checked")
		return nil
	}
	if free >= need {
		return nil
	}
	return transient(job.ContextLocalFile, job.ERROR_DISK_FULL, nil,
		"not enough free space for %s: %d bytes free, %d needed (%d still to write, %d kept in reserve)",
		ft.r.TempName, free, need, need-ft.r.MinFreeBytes, ft.r.MinFreeBytes)
}

// action is what to do with a response.
type action int

const (
	actStream action = iota // write its body
	actDone                 // nothing left to fetch
	actAgain                // the staged bytes were reset; ask again
)

func (ft *fetcher) transfer(ctx context.Context) (Result, error) {
	if ft.ranged {
		if ft.st.Total >= 0 && ft.pos == ft.st.Total {
			return ft.finish() // a crash after the last byte, before the Complete sidecar
		}
		if f := ft.tooLarge(ft.st.Total, "the total of the file's ranges"); f != nil {
			return Result{}, ft.fail(ctx, f)
		}
	}
	if ft.st.Total >= 0 {
		if f := ft.checkSpace(); f != nil {
			return Result{}, ft.fail(ctx, f)
		}
	}
	for {
		resp, ask, err := ft.get(ctx)
		if err != nil {
			return Result{}, ft.fail(ctx, err)
		}
		var (
			act action
			end int64
			f   *Failure
		)
		if ft.ranged {
			act, end, f = ft.acceptRange(resp, ask)
		} else {
			act, end, f = ft.accept(resp, ask.sent)
		}
		if f == nil && act == actStream {
			f = ft.checkSpace()
		}
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
			err := ft.stream(ctx, resp, end)
			resp.Body.Close()
			if err != nil {
				return Result{}, ft.fail(ctx, err)
			}
			if ft.st.Total >= 0 && ft.pos < ft.st.Total {
				// The server sent a shorter range than asked for
				// (some cap ranges), or the next range is due.
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

// asked is the byte range a request asked for.
type asked struct {
	sent        bool  // a Range header was sent
	first, last int64 // remote offsets, inclusive; last -1 = to the end
}

// get sends the request for the bytes from pos on.
func (ft *fetcher) get(ctx context.Context) (*http.Response, asked, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ft.r.URL, nil)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, asked{}, fatal(job.ContextRemoteFile, job.ERROR_WINHTTP_INVALID_URL, err, "cannot build the request: %s", err.Error())
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
	var a asked
	switch {
	case ft.r.Dynamic:
		// Never a Range: dynamic content has no stable byte positions.
	case ft.ranged:
		first, last, ok := ft.plan().ask(ft.pos)
		if !ok {
			return nil, asked{}, fatal(job.ContextRemoteFile, job.E_UNEXPECTED, nil, "no range is left to fetch at offset %d", ft.pos)
		}
		a = asked{sent: true, first: first, last: last}
	case ft.pos > 0:
		a = asked{sent: true, first: ft.pos, last: -1}
	}
	if a.sent {
		req.Header.Set("Range", rangeHeader(a.first, a.last))
		switch {
		case strings.HasPrefix(ft.st.ETag, `"`): // strong ETag
			req.Header.Set("If-Range", ft.st.ETag)
		case ft.st.LastModified != "":
			req.Header.Set("If-Range", ft.st.LastModified)
		}
	}
	ft.redir.reset()
	resp, err := ft.r.Client.Do(req)
	if err == nil {
		if ft.redir.report() && resp.Request != nil && resp.Request.URL.String() != req.URL.String() {
			ft.st.FinalURL = redactURL(resp.Request.URL)
		} else {
			ft.st.FinalURL = ""
		}
	}
	return resp, a, err
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
	ft.st.Header = keptHeader(h)
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
	case code == http.StatusPartialContent && isMultipart(h):
		return 0, 0, fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
			"the server answered a single range with multipart/byteranges")
	case code == http.StatusPartialContent && sentRange:
		cr, err := parseContentRange(h.Get("Content-Range"))
		switch {
		case ft.validatorChanged(h), err == nil && ft.st.Total >= 0 && cr.Total >= 0 && cr.Total != ft.st.Total:
			// The server ignored If-Range, or the size changed.
			return actAgain, 0, ft.reset(RestartValidatorChange)
		case err != nil, cr.unsatisfied(), cr.First != ft.pos,
			resp.ContentLength >= 0 && resp.ContentLength != cr.Last-cr.First+1:
			ft.log.Debug().Str("content_range", printable(h.Get("Content-Range"), 80)).Int64("asked", ft.pos).Msg("unusable Content-Range")
			return actAgain, 0, ft.reset(RestartBadContentRange)
		}
		if f := ft.tooLarge(cr.Total, "the file"); f != nil {
			return 0, 0, f
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
		if f := ft.tooLarge(cr.Total, "the file"); f != nil {
			return 0, 0, f
		}
		ft.st.Total = cr.Total
		ft.adopt(h)
		return actStream, cr.Total, nil

	case code == http.StatusOK, code == http.StatusNonAuthoritativeInfo:
		if f := ft.tooLarge(resp.ContentLength, "the file"); f != nil {
			return 0, 0, f
		}
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
		ft.st.Header = keptHeader(h)
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

// acceptRange decides what to do with the response to a request for one of
// Request.Ranges. Unlike a whole file, a server that cannot serve ranges is
// a fatal error: there is nothing to fall back on.
func (ft *fetcher) acceptRange(resp *http.Response, a asked) (act action, end int64, f *Failure) {
	const rf = job.ContextRemoteFile
	h := resp.Header
	asked := rangeHeader(a.first, a.last)
	switch code := resp.StatusCode; {
	case code == http.StatusPartialContent:
		if isMultipart(h) {
			return 0, 0, fatal(rf, job.BG_E_INVALID_SERVER_RESPONSE, nil,
				"the server answered the range %s with multipart/byteranges", asked)
		}
		cr, err := parseContentRange(h.Get("Content-Range"))
		if err != nil || cr.unsatisfied() {
			return 0, 0, fatal(rf, job.BG_E_INVALID_SERVER_RESPONSE, err,
				"the server answered the range %s with an unusable Content-Range %q", asked, printable(h.Get("Content-Range"), 80))
		}
		if ft.validatorChanged(h) || (cr.Total >= 0 && ft.st.RemoteSize > 0 && cr.Total != ft.st.RemoteSize) {
			return ft.remoteChanged()
		}
		if cr.First != a.first || (a.last >= 0 && cr.Last > a.last) ||
			(resp.ContentLength >= 0 && resp.ContentLength != cr.Last-cr.First+1) {
			return 0, 0, fatal(rf, job.BG_E_INVALID_SERVER_RESPONSE, nil,
				"the server answered the range %s with Content-Range %q", asked, printable(h.Get("Content-Range"), 80))
		}
		if cr.Total >= 0 {
			if i := ft.plan().pastEOF(cr.Total); i >= 0 {
				r := ft.r.Ranges[i]
				return 0, 0, fatal(rf, job.BG_E_INVALID_RANGE, nil,
					"range %d (offset %d, length %d) is past the end of the %d-byte remote file", i, r.Offset, r.Length, cr.Total)
			}
			ft.st.RemoteSize = cr.Total
			ft.st.Total = ft.plan().total()
			if f := ft.tooLarge(ft.st.Total, "the total of the file's ranges"); f != nil {
				return 0, 0, f
			}
		} else if ft.st.Total < 0 {
			return 0, 0, fatal(rf, job.BG_E_MISSING_FILE_SIZE, nil,
				"the file has a range to the end of the file and the server did not say the file's size (Content-Range %q)", printable(h.Get("Content-Range"), 80))
		}
		ft.adopt(h)
		return actStream, ft.pos + cr.Last - cr.First + 1, nil

	case code == http.StatusOK, code == http.StatusNonAuthoritativeInfo:
		if ft.validatorChanged(h) {
			return ft.remoteChanged() // If-Range did its job
		}
		return 0, 0, fatal(rf, job.BG_E_INSUFFICIENT_RANGE, nil,
			"the server answered the range request %s with the whole file (%s); it does not support ranges", asked, printable(resp.Status, 40))

	case code == http.StatusRequestedRangeNotSatisfiable:
		if ft.validatorChanged(h) {
			return ft.remoteChanged()
		}
		size := "an unknown size"
		if cr, err := parseContentRange(h.Get("Content-Range")); err == nil && cr.unsatisfied() {
			size = fmt.Sprintf("%d bytes", cr.Total)
		}
		return 0, 0, fatal(rf, job.BG_E_INVALID_RANGE, nil,
			"the server cannot satisfy the range %s (the remote file has %s)", asked, size)
	}
	return 0, 0, httpFailure(resp, time.Now())
}

// remoteChanged starts a file of ranges over because the remote file
// changed, at most maxChangeRestarts times per Fetch.
func (ft *fetcher) remoteChanged() (action, int64, *Failure) {
	ft.changes++
	if ft.changes > maxChangeRestarts {
		return 0, 0, transient(job.ContextRemoteFile, job.BG_E_REMOTE_FILE_CHANGED, nil,
			"the remote file changed %d times during the transfer of its ranges", ft.changes)
	}
	return actAgain, 0, ft.reset(RestartValidatorChange)
}

func isMultipart(h http.Header) bool {
	return strings.HasPrefix(strings.ToLower(strings.TrimSpace(h.Get("Content-Type"))), "multipart/")
}

// stream writes the body from pos on, checkpointing as it goes.
//
// Two fixed buffers alternate: while one chunk is written to the file and
// hashed by a helper goroutine, the next is read from the network. Memory
// stays at two buffers whatever the file size; the helper never outlives
// the call.
func (ft *fetcher) stream(ctx context.Context, resp *http.Response, end int64) (err error) {
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
	if c := chunkLimit(ft.r.Limiter); c > 0 && c < len(cur) {
		// rate.Limiter refuses to wait for more than its burst at once.
		cur, spare = cur[:c], spare[:c]
	}

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

	// Reads run on a helper goroutine so that a body that stalls still gets
	// its checkpoint on time: while a read waits, the bytes already written
	// are made durable once CheckpointInterval has passed. Only this
	// goroutine touches the file, the hash and the hooks.
	type readResult struct {
		n   int
		err error
	}
	readDone := make(chan readResult, 1)
	reading, taken := false, 0
	var filled atomic.Int64
	defer func() {
		if reading {
			// Unblock the outstanding read before its buffer goes back to
			// the pool.
			resp.Body.Close()
			<-readDone
		}
	}()
	tick := time.NewTicker(ft.r.CheckpointInterval)
	defer tick.Stop()

	ft.lastCP, ft.sinceCP = time.Now(), 0
	for {
		p := cur
		if end >= 0 {
			// One byte more than expected detects an overlong body.
			if rem := end - ft.pos - int64(inflight) + 1; rem < int64(len(p)) {
				p = p[:rem]
			}
		}
		// The helper fills p and publishes how much it has filled; p[:filled]
		// is never written again, so a checkpoint during a stall can take
		// those bytes (taken) while the helper goes on filling the rest.
		reading, taken = true, 0
		filled.Store(0)
		go func() {
			var n int
			var err error
			for n < len(p) && err == nil {
				var k int
				k, err = resp.Body.Read(p[n:])
				n += k
				filled.Store(int64(n))
			}
			readDone <- readResult{n, err}
		}()
		var rr readResult
	waitRead:
		for {
			select {
			case rr = <-readDone:
				reading = false
				break waitRead
			case <-tick.C:
				if time.Since(ft.lastCP) < ft.r.CheckpointInterval {
					continue
				}
				if err := wait(); err != nil {
					return err
				}
				if k := int(filled.Load()); k > taken {
					if end >= 0 && ft.pos+int64(k-taken) > end {
						return fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
							"the server sent more than the %d bytes it announced", end)
					}
					w, err := ft.file.Write(p[taken:k])
					ft.h.Write(p[taken : taken+w])
					ft.pos += int64(w)
					ft.sinceCP += int64(w)
					if err != nil {
						return classifyLocal(err, "write the temporary file")
					}
					taken = k
				}
				if ft.sinceCP > 0 {
					if err := ft.checkpoint(true); err != nil {
						return err
					}
				}
			}
		}
		n, rerr := rr.n-taken, rr.err
		p = p[taken:rr.n]
		if err := wait(); err != nil {
			return err
		}
		if n > 0 {
			if end >= 0 && ft.pos+int64(n) > end {
				return fatal(job.ContextRemoteFile, job.BG_E_INVALID_SERVER_RESPONSE, nil,
					"the server sent more than the %d bytes it announced", end)
			}
			if f := ft.tooLarge(ft.pos+int64(n), "the body received so far"); f != nil {
				return f
			}
			if ft.r.Limiter != nil {
				if err := ft.r.Limiter.WaitN(ctx, n); err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					return transient(job.ContextGeneralTransport, job.BG_E_BLOCKED_BY_POLICY, fmt.Errorf("%w: %w", errLimiterWait, err),
						"the bandwidth limit does not allow the transfer to go on: %s", err.Error())
				}
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

// unstage removes the staging file this call created when the call fails
// before anything was staged in it (the hook refused the start, the context
// ended, the request failed): an agent that lost the job while it opened
// the file (paused, say, while the new holder finished and completed it,
// so that it found no file and made a new one) leaves nothing behind. It
// still holds the lock, and removes the file only if it is still the one at
// TempName.
func (ft *fetcher) unstage() {
	if !ft.created || ft.saved || ft.pos != 0 || ft.file == nil {
		return
	}
	fi, ferr := ft.file.Stat()
	pi, perr := ft.r.Root.Lstat(ft.r.TempName)
	if ferr == nil && perr == nil && os.SameFile(fi, pi) {
		_ = ft.r.Root.Remove(ft.r.TempName)
	}
}

func (e *hookError) Error() string { return e.err.Error() }
func (e *hookError) Unwrap() error { return e.err }

// checkpoint makes pos durable: data first, then the sidecar that claims it.
func (ft *fetcher) checkpoint(hook bool) error {
	if err := ft.file.Sync(); err != nil {
		return classifyLocal(err, "flush the temporary file to disk")
	}
	ft.st.Offset = ft.pos
	ft.saved = true
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
	if f := ft.validate(); f != nil {
		return Result{}, f
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
	ft.unstage()
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
