package job

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// Command is something a user, an agent or a timer asks of a job. Decide turns
// a command and the job's state into events (or a refusal).
type Command interface{ commandName() string }

// Limits bound what users may ask. Zero values mean the defaults.
type Limits struct {
	MaxFilesPerJob   int
	MaxRangesPerFile int
	// MaxJobsPerUser bounds the jobs a user has that are not final
	// (BG_E_TOO_MANY_JOBS_PER_USER); the coordinator counts them.
	MaxJobsPerUser int
}

func (l Limits) maxFiles() int {
	if l.MaxFilesPerJob <= 0 {
		return DefaultMaxFilesPerJob
	}
	return l.MaxFilesPerJob
}

func (l Limits) maxRanges() int {
	if l.MaxRangesPerFile <= 0 {
		return DefaultMaxRangesPerFile
	}
	return l.MaxRangesPerFile
}

// JobsPerUser is MaxJobsPerUser or its default.
func (l Limits) JobsPerUser() int {
	if l.MaxJobsPerUser <= 0 {
		return DefaultMaxJobsPerUser
	}
	return l.MaxJobsPerUser
}

// User commands.
type (
	// Create makes a new download job (CreateJob + AddFileSet).
	Create struct {
		JobID       string
		DisplayName string
		Description string
		Owner       string
		Priority    Priority
		Pool        string
		// Agent pins the job to one agent ("": any agent of Pool).
		Agent string
		// Nil means the default; values below the 5 s floor are raised.
		MinimumRetryDelay *time.Duration
		NoProgressTimeout *time.Duration
		// Nil means DefaultMaxDownloadTime; 0 means no limit.
		MaxDownloadTime *time.Duration
		Options         *OptionsPatch
		Files           []events.FileSpec
		Limits          Limits
	}
	// AddFiles appends files (AddFile / AddFileSet).
	AddFiles struct {
		Files  []events.FileSpec
		Limits Limits
	}
	// Modify sets job properties; nil fields are unchanged.
	Modify struct {
		DisplayName       *string
		Description       *string
		Priority          *Priority
		MinimumRetryDelay *time.Duration
		NoProgressTimeout *time.Duration
		MaxDownloadTime   *time.Duration
		Options           *OptionsPatch
	}
	Resume   struct{}
	Suspend  struct{}
	Cancel   struct{}
	Complete struct{}
)

// Agent commands: Agent is the agent's principal; a write by an agent that
// does not hold the job's lease is refused (the agent has been fenced).
type (
	// Lease claims the job for an attempt. DispatchSeq is the job version the
	// dispatch command carried.
	Lease struct {
		Agent       string
		DispatchSeq uint64
		// Deliveries is how many times the dispatch has been delivered
		// (1 the first time; more after a holder went silent past AckWait
		// or handed it back).
		Deliveries int
	}
	StartConnecting struct {
		Agent     string
		FileIndex int
	}
	StartTransferring struct {
		Agent      string
		FileIndex  int
		BytesTotal int64
		Offset     int64
		Restarted  string
	}
	Checkpoint struct {
		Agent            string
		FileIndex        int
		BytesTransferred int64
		BytesTotal       int64
	}
	FileDone struct {
		Agent        string
		FileIndex    int
		Bytes        int64
		SHA256       string
		TempName     string
		ETag         string
		LastModified string
		// ResponseHeaders and FinalURL: see events.FileTransferred.
		ResponseHeaders map[string]string
		FinalURL        string
	}
	// Fail reports a failure of the current attempt. Transient failures go to
	// TRANSIENT_ERROR (or ERROR once NoProgressTimeout has run out).
	Fail struct {
		Agent      string
		Error      events.ErrorInfo
		Transient  bool
		RetryAfter time.Duration
	}
	// CompleteDone reports that the files' host renamed the listed files.
	CompleteDone struct {
		Agent string
		Files []int
	}
	// CompleteFailed reports that renaming failed; the job stays TRANSFERRED.
	CompleteFailed struct {
		Agent   string
		Error   events.ErrorInfo
		Renamed []int // files renamed before the failure
	}
	// FilesDeleted reports the cleanup after Cancel.
	FilesDeleted struct {
		Agent     string
		Undeleted []string
	}
	// Yield gives the job back to the queue: its agent preempted it for
	// higher-priority work (BITS: the time slice ended). The staged files
	// stay where they are.
	Yield struct {
		Agent string
	}
)

// Timeout is the clock's command: it applies whatever deadline of the job
// has passed at now (JobInactivityTimeout, MaxDownloadTime,
// NoProgressTimeout of a TRANSIENT_ERROR job). Nothing due: no events.
type Timeout struct {
	// InactivityTimeout cancels a job not modified for that long (0: the
	// default, negative: never).
	InactivityTimeout time.Duration
}

func (Create) commandName() string            { return "create" }
func (AddFiles) commandName() string          { return "add-files" }
func (Modify) commandName() string            { return "modify" }
func (Resume) commandName() string            { return "resume" }
func (Suspend) commandName() string           { return "suspend" }
func (Cancel) commandName() string            { return "cancel" }
func (Complete) commandName() string          { return "complete" }
func (Lease) commandName() string             { return "lease" }
func (StartConnecting) commandName() string   { return "connecting" }
func (StartTransferring) commandName() string { return "transferring" }
func (Checkpoint) commandName() string        { return "checkpoint" }
func (FileDone) commandName() string          { return "file-done" }
func (Fail) commandName() string              { return "fail" }
func (CompleteDone) commandName() string      { return "complete-done" }
func (CompleteFailed) commandName() string    { return "complete-failed" }
func (FilesDeleted) commandName() string      { return "files-deleted" }
func (Yield) commandName() string             { return "yield" }
func (Timeout) commandName() string           { return "time out" }

// CommandName names a command for logs and errors.
func CommandName(c Command) string { return c.commandName() }

// ErrLeaseLost is the detail of the refusal an agent gets when it no longer
// holds the job: it must stop working on it.
const ErrLeaseLost = "the agent does not hold the job's lease"

// Decide returns the events that command c causes on job j at time now, or an
// *Error saying why c is refused. No events and no error means c changes
// nothing (an idempotent repeat). Decide is pure.
func Decide(j *Job, c Command, now time.Time) ([]events.Payload, error) {
	if _, ok := c.(Create); !ok && !j.Exists() {
		return nil, Errorf(BG_E_NOT_FOUND, "job not found")
	}
	switch c := c.(type) {
	case Create:
		return decideCreate(j, c)
	case AddFiles:
		if err := notFinal(j, c); err != nil {
			return nil, err
		}
		if j.PendingComplete {
			return nil, invalidState(j, c)
		}
		files, err := checkFiles(c.Files, len(j.Files), c.Limits, false, j.Options.Dynamic)
		if err != nil {
			return nil, err
		}
		return one(&events.FilesAdded{Files: files}), nil
	case Modify:
		return decideModify(j, c)
	case Resume:
		if err := notFinal(j, c); err != nil {
			return nil, err
		}
		if len(j.Files) == 0 {
			return nil, Errorf(BG_E_EMPTY, "the job has no files: add a file before resuming it")
		}
		if j.PendingComplete {
			return nil, invalidState(j, c)
		}
		if j.State.Active() || (j.State == Transferred && j.NextFile() < 0) {
			return nil, nil
		}
		return one(&events.JobQueued{Reason: QueuedResume}), nil
	case Suspend:
		if err := notFinal(j, c); err != nil {
			return nil, err
		}
		if j.State == Suspended {
			return nil, nil
		}
		if j.PendingComplete {
			return nil, invalidState(j, c)
		}
		return one(&events.JobSuspended{}), nil
	case Cancel:
		if err := notFinal(j, c); err != nil {
			return nil, err
		}
		return one(&events.JobCancelled{Agent: j.FilesAgent}), nil
	case Timeout:
		return decideTimeout(j, c, now), nil
	case DispatchFailed:
		return DecideDispatchFailed(j, c, now)
	case Yield:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		return one(&events.JobQueued{Reason: QueuedPreempted}), nil
	case Complete:
		if err := notFinal(j, c); err != nil {
			return nil, err
		}
		if j.PendingComplete {
			return nil, nil
		}
		if j.FilesAgent == "" {
			// Nothing is staged anywhere: acknowledge at once.
			return []events.Payload{
				&events.JobCompleteRequested{},
				&events.JobAcknowledged{Files: []int{}, Partial: len(j.Files) > 0},
			}, nil
		}
		return one(&events.JobCompleteRequested{Agent: j.FilesAgent}), nil
	case Lease:
		return decideLease(j, c, now)
	case StartConnecting:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		if err := fileIndex(j, c.FileIndex); err != nil {
			return nil, err
		}
		return one(&events.JobConnecting{Agent: c.Agent, FileIndex: c.FileIndex}), nil
	case StartTransferring:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		if err := fileIndex(j, c.FileIndex); err != nil {
			return nil, err
		}
		return one(&events.JobTransferring{Agent: c.Agent, FileIndex: c.FileIndex,
			BytesTotal: c.BytesTotal, Offset: c.Offset, Restarted: c.Restarted}), nil
	case Checkpoint:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		if err := fileIndex(j, c.FileIndex); err != nil {
			return nil, err
		}
		if j.State != Transferring {
			return nil, invalidState(j, c)
		}
		return one(&events.FileProgressed{FileIndex: c.FileIndex,
			BytesTransferred: c.BytesTransferred, BytesTotal: c.BytesTotal}), nil
	case FileDone:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		if err := fileIndex(j, c.FileIndex); err != nil {
			return nil, err
		}
		if j.Files[c.FileIndex].Transferred {
			return nil, nil
		}
		out := []events.Payload{&events.FileTransferred{FileIndex: c.FileIndex, Bytes: c.Bytes,
			SHA256: c.SHA256, TempName: c.TempName, ETag: c.ETag, LastModified: c.LastModified,
			ResponseHeaders: c.ResponseHeaders, FinalURL: c.FinalURL}}
		if lastPending(j, c.FileIndex) {
			out = append(out, &events.JobTransferred{})
		}
		return out, nil
	case Fail:
		if err := holds(j, c.Agent, c); err != nil {
			return nil, err
		}
		if !c.Transient || j.RetryPolicy.NoProgressTimeoutSec == 0 {
			return one(&events.JobFailed{Error: c.Error}), nil
		}
		noProgress := time.Duration(j.RetryPolicy.NoProgressTimeoutSec) * time.Second
		if now.Sub(j.LastProgress) >= noProgress {
			e := c.Error
			e.Description = fmt.Sprintf("%s (no progress for %s: NoProgressTimeout reached)", e.Description, noProgress)
			return one(&events.JobFailed{Error: e}), nil
		}
		delay := max(time.Duration(j.RetryPolicy.MinimumRetryDelaySec)*time.Second, c.RetryAfter)
		return one(&events.JobTransientError{Error: c.Error, RetryAt: now.Add(delay).UTC(),
			Attempt: j.Attempt, RetryAfterSec: int64((delay + time.Second - 1) / time.Second)}), nil
	case CompleteDone:
		if !j.PendingComplete || c.Agent != j.FilesAgent {
			return nil, invalidState(j, c)
		}
		done := make(map[int]bool, len(c.Files))
		for _, i := range c.Files {
			if err := fileIndex(j, i); err != nil {
				return nil, err
			}
			done[i] = true
		}
		return one(&events.JobAcknowledged{Files: c.Files, Partial: len(done) < len(j.Files)}), nil
	case CompleteFailed:
		if !j.PendingComplete || c.Agent != j.FilesAgent {
			return nil, invalidState(j, c)
		}
		for _, i := range c.Renamed {
			if err := fileIndex(j, i); err != nil {
				return nil, err
			}
		}
		return one(&events.JobCompleteFailed{Error: c.Error, Renamed: c.Renamed}), nil
	case SetClientCertificate:
		return decideSetCert(j, c)
	case RemoveClientCertificate:
		return decideRemoveCert(j, c)
	case TakeOwnership:
		return decideTakeOwnership(j, c)
	case MakeHeadersWriteOnly:
		return decideMakeHeadersWriteOnly(j, c)
	case ClearWriteOnlyHeaders:
		return decideClearWriteOnlyHeaders(j, c)
	case FilesDeleted:
		if j.State != Cancelled || !j.PendingCleanup || c.Agent != j.FilesAgent {
			return nil, invalidState(j, c)
		}
		return one(&events.JobFilesDeleted{Agent: c.Agent, Undeleted: c.Undeleted}), nil
	}
	return nil, Errorf(E_NOTIMPL, "unknown command %T", c)
}

func decideCreate(j *Job, c Create) ([]events.Payload, error) {
	if j.Exists() {
		return nil, Errorf(E_INVALIDARG, "job %s already exists", c.JobID)
	}
	if !events.ValidID(c.JobID) {
		return nil, Errorf(E_INVALIDARG, "job id %q is not valid", c.JobID)
	}
	if err := ValidateDisplayName(c.DisplayName); err != nil {
		return nil, err
	}
	if err := ValidateDescription(c.Description); err != nil {
		return nil, err
	}
	prio := c.Priority
	if prio == "" {
		prio = Normal
	}
	if _, err := ParsePriority(string(prio)); err != nil {
		return nil, err
	}
	pool := c.Pool
	if pool == "" {
		pool = DefaultPool
	}
	if !events.ValidID(pool) {
		return nil, Errorf(E_INVALIDARG, "pool %q is not valid", pool)
	}
	if c.Agent != "" && !events.ValidID(c.Agent) {
		return nil, Errorf(E_INVALIDARG, "agent %q is not a valid agent ID (letters, digits, '-' and '_')", c.Agent)
	}
	rp := events.RetryPolicy{
		MinimumRetryDelaySec: int64(DefaultMinimumRetryDelay / time.Second),
		NoProgressTimeoutSec: int64(DefaultNoProgressTimeout / time.Second),
		MaxDownloadTimeSec:   int64(DefaultMaxDownloadTime / time.Second),
	}
	if err := applyRetry(&rp, c.MinimumRetryDelay, c.NoProgressTimeout, c.MaxDownloadTime); err != nil {
		return nil, err
	}
	opts, err := applyOptions(events.JobOptions{}, c.Options, false, nil)
	if err != nil {
		return nil, err
	}
	files, err := checkFiles(c.Files, 0, c.Limits, true, opts.Dynamic)
	if err != nil {
		return nil, err
	}
	out := []events.Payload{&events.JobCreated{
		JobID: c.JobID, DisplayName: c.DisplayName, Description: c.Description,
		JobType: TypeDownload, Owner: c.Owner, Priority: string(prio), Pool: pool, Agent: c.Agent, RetryPolicy: rp,
		Options: opts,
	}}
	if len(files) > 0 {
		out = append(out, &events.FilesAdded{Files: files})
	}
	return out, nil
}

func decideModify(j *Job, c Modify) ([]events.Payload, error) {
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	ev := &events.JobModified{}
	changed := false
	if c.DisplayName != nil && *c.DisplayName != j.DisplayName {
		if err := ValidateDisplayName(*c.DisplayName); err != nil {
			return nil, err
		}
		ev.DisplayName, changed = c.DisplayName, true
	}
	if c.Description != nil && *c.Description != j.Description {
		if err := ValidateDescription(*c.Description); err != nil {
			return nil, err
		}
		ev.Description, changed = c.Description, true
	}
	if c.Priority != nil {
		p, err := ParsePriority(string(*c.Priority))
		if err != nil {
			return nil, err
		}
		if p != j.Priority {
			s := string(p)
			ev.Priority, changed = &s, true
		}
	}
	if c.MinimumRetryDelay != nil || c.NoProgressTimeout != nil || c.MaxDownloadTime != nil {
		rp := j.RetryPolicy
		if err := applyRetry(&rp, c.MinimumRetryDelay, c.NoProgressTimeout, c.MaxDownloadTime); err != nil {
			return nil, err
		}
		if rp != j.RetryPolicy {
			ev.RetryPolicy, changed = &rp, true
		}
	}
	if !c.Options.Empty() {
		opts, err := applyOptions(j.Options, c.Options, j.Resumed, j.Files)
		if err != nil {
			return nil, err
		}
		if !OptionsEqual(opts, j.Options) {
			ev.Options, changed = &opts, true
		}
	}
	if !changed {
		return nil, nil
	}
	return one(ev), nil
}

func applyRetry(rp *events.RetryPolicy, minDelay, noProgress, maxDownload *time.Duration) error {
	if maxDownload != nil {
		if *maxDownload < 0 {
			return Errorf(E_INVALIDARG, "maximum download time must not be negative (0 means no limit)")
		}
		rp.MaxDownloadTimeSec = int64(*maxDownload / time.Second)
		if *maxDownload > 0 && rp.MaxDownloadTimeSec == 0 {
			rp.MaxDownloadTimeSec = 1
		}
	}
	if minDelay != nil {
		if *minDelay < 0 {
			return Errorf(E_INVALIDARG, "minimum retry delay must not be negative")
		}
		rp.MinimumRetryDelaySec = int64(max(*minDelay, MinimumRetryDelayFloor) / time.Second)
	}
	if noProgress != nil {
		if *noProgress < 0 {
			return Errorf(E_INVALIDARG, "no-progress timeout must not be negative")
		}
		rp.NoProgressTimeoutSec = int64(*noProgress / time.Second)
	}
	return nil
}

func decideLease(j *Job, c Lease, now time.Time) ([]events.Payload, error) {
	if c.Agent == "" {
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "agent is required")
	}
	if j.TargetAgent != "" && c.Agent != j.TargetAgent {
		return nil, Errorf(E_ACCESSDENIED, "job %s is pinned to agent %s; agent %s may not lease it", j.ID, j.TargetAgent, c.Agent)
	}
	lease := &events.JobLeased{Agent: c.Agent, Attempt: j.Attempt + 1, DispatchSeq: c.DispatchSeq, Deliveries: c.Deliveries}
	if j.Agent != "" && j.Agent != c.Agent {
		// A takeover: the holder stopped heartbeating (died, paused, cut
		// off) or handed the job back, and its dispatch came here.
		lease.PreviousAgent = j.Agent
	}
	switch {
	case j.State.Active() && !j.PendingComplete:
		// QUEUED, or a takeover of an attempt whose agent went away.
		return one(lease), nil
	case j.State == TransientError && j.RetryAt != nil && !now.Before(*j.RetryAt) && !j.noProgressExpired(now):
		return []events.Payload{&events.JobQueued{Reason: QueuedRetry}, lease}, nil
	}
	return nil, invalidState(j, c)
}

// checkFiles validates files to add and returns them normalized (digests in
// lower case).
func checkFiles(files []events.FileSpec, have int, l Limits, allowEmpty, dynamic bool) ([]events.FileSpec, error) {
	if len(files) == 0 && !allowEmpty {
		return nil, Errorf(RPC_X_NULL_REF_POINTER, "no files given")
	}
	if have+len(files) > l.maxFiles() {
		return nil, Errorf(BG_E_TOO_MANY_FILES_IN_JOB, "a job holds at most %d files (it has %d, %d more asked)", l.maxFiles(), have, len(files))
	}
	out := make([]events.FileSpec, len(files))
	for i, f := range files {
		err := ValidateFile(f)
		if err == nil && f.Ranges != nil {
			switch {
			case len(f.Ranges) == 0:
				err = Errorf(E_INVALIDARG, "ranges: at least one range is required (omit ranges for the whole file)")
			case dynamic:
				err = Errorf(BG_E_RANDOM_ACCESS_NOT_SUPP, "a job with dynamic content cannot fetch ranges")
			default:
				err = validateRanges(f.Ranges, l.maxRanges())
			}
		}
		if err == nil && f.SHA256 != "" {
			f.SHA256 = strings.ToLower(f.SHA256)
			if !isLowerHex(f.SHA256, 64) {
				err = Errorf(E_INVALIDARG, "sha256 must be 64 hex digits")
			}
		}
		if err != nil {
			if e, ok := err.(*Error); ok {
				e.Detail = fmt.Sprintf("file %d: %s", have+i, e.Detail)
			}
			return nil, err
		}
		f.Ranges = slices.Clone(f.Ranges)
		out[i] = f
	}
	return out, nil
}

// Reasons of JobQueued.
const (
	QueuedResume    = "resume"
	QueuedRetry     = "retry"
	QueuedRequeue   = "requeue"
	QueuedPreempted = "preempted"
)

// decideTimeout applies the earliest deadline that has passed at now (a
// clock that was down applies them in the order they fell due, one per call).
func decideTimeout(j *Job, c Timeout, now time.Time) []events.Payload {
	if j.State.Final() {
		return nil
	}
	kind, at := j.nextDeadline(c)
	if at.IsZero() || now.Before(at) {
		return nil
	}
	switch kind {
	case deadlineInactivity:
		return one(&events.JobCancelled{Agent: j.FilesAgent, Reason: events.CancelledInactivity})
	case deadlineMaxDownload:
		max := time.Duration(j.RetryPolicy.MaxDownloadTimeSec) * time.Second
		return one(&events.JobFailed{Error: events.ErrorInfo{Context: ContextGeneralQueueManager,
			Code: BG_E_MAXDOWNLOAD_TIMEOUT.Symbol, HResult: BG_E_MAXDOWNLOAD_TIMEOUT.HResultString(),
			Description: fmt.Sprintf("the job spent its maximum download time (%s) connecting and transferring", max),
			FileIndex:   j.CurrentFile}})
	default: // deadlineNoProgress
		e := events.ErrorInfo{Context: ContextGeneralQueueManager, FileIndex: -1}
		if j.Error != nil {
			e = *j.Error
		}
		noProgress := time.Duration(j.RetryPolicy.NoProgressTimeoutSec) * time.Second
		e.Description = fmt.Sprintf("%s (no progress for %s: NoProgressTimeout reached)", e.Description, noProgress)
		return one(&events.JobFailed{Error: e})
	}
}

type deadlineKind int

const (
	deadlineInactivity deadlineKind = iota
	deadlineMaxDownload
	deadlineNoProgress
)

func (c Timeout) inactivity() time.Duration {
	switch {
	case c.InactivityTimeout == 0:
		return DefaultJobInactivityTimeout
	case c.InactivityTimeout < 0:
		return 0
	}
	return c.InactivityTimeout
}

// maxDownloadDeadline is when MaxDownloadTime runs out, while the job is
// CONNECTING or TRANSFERRING.
func (j *Job) maxDownloadDeadline() (time.Time, bool) {
	if j.RetryPolicy.MaxDownloadTimeSec <= 0 || j.ActiveSince == nil || j.PendingComplete {
		return time.Time{}, false
	}
	max := time.Duration(j.RetryPolicy.MaxDownloadTimeSec) * time.Second
	return j.ActiveSince.Add(max - j.DownloadTime), true
}

// noProgressDeadline is when a TRANSIENT_ERROR job turns to ERROR.
func (j *Job) noProgressDeadline() (time.Time, bool) {
	if j.State != TransientError || j.RetryPolicy.NoProgressTimeoutSec <= 0 {
		return time.Time{}, false
	}
	return j.LastProgress.Add(time.Duration(j.RetryPolicy.NoProgressTimeoutSec) * time.Second), true
}

func (j *Job) noProgressExpired(now time.Time) bool {
	at, ok := j.noProgressDeadline()
	return ok && !now.Before(at)
}

// NextDeadline is the earliest time at which Timeout would change the job
// (zero: none). The clock that drives Timeout sleeps until then.
func (j *Job) NextDeadline(c Timeout) time.Time {
	_, at := j.nextDeadline(c)
	return at
}

func (j *Job) nextDeadline(c Timeout) (deadlineKind, time.Time) {
	if j.State.Final() || !j.Exists() {
		return 0, time.Time{}
	}
	var (
		next time.Time
		kind deadlineKind
	)
	consider := func(k deadlineKind, t time.Time, ok bool) {
		if ok && (next.IsZero() || t.Before(next)) {
			next, kind = t, k
		}
	}
	if inactivity := c.inactivity(); inactivity > 0 {
		consider(deadlineInactivity, j.Times.Modification.Add(inactivity), true)
	}
	at, ok := j.maxDownloadDeadline()
	consider(deadlineMaxDownload, at, ok)
	at, ok = j.noProgressDeadline()
	consider(deadlineNoProgress, at, ok)
	return kind, next
}
func notFinal(j *Job, c Command) error {
	if j.State.Final() {
		return invalidState(j, c)
	}
	return nil
}

func invalidState(j *Job, c Command) error {
	return Errorf(BG_E_INVALID_STATE, "cannot %s a job that is %s%s", c.commandName(), j.State, pendingNote(j))
}

func pendingNote(j *Job) string {
	switch {
	case j.PendingComplete:
		return " (completion pending)"
	case j.PendingCleanup:
		return " (cleanup pending)"
	}
	return ""
}

// holds checks that agent holds the job's lease in an active state.
func holds(j *Job, agent string, c Command) error {
	if agent == "" || j.Agent != agent || !j.State.Active() || j.PendingComplete {
		return &Error{Code: BG_E_INVALID_STATE, Detail: fmt.Sprintf("%s: %s (job is %s, lease %q)", c.commandName(), ErrLeaseLost, j.State, j.Agent)}
	}
	return nil
}

func fileIndex(j *Job, i int) error {
	if i < 0 || i >= len(j.Files) {
		return Errorf(E_INVALIDARG, "file index %d out of range (job has %d files)", i, len(j.Files))
	}
	return nil
}

func lastPending(j *Job, i int) bool {
	for k := range j.Files {
		if k != i && !j.Files[k].Transferred {
			return false
		}
	}
	return true
}

func one(p events.Payload) []events.Payload { return []events.Payload{p} }
