package job

import (
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// Command is something a user, an agent or a timer asks of a job. Decide turns
// a command and the job's state into events (or a refusal).
type Command interface{ commandName() string }

// Limits bound what users may ask. Zero values mean the defaults.
type Limits struct {
	MaxFilesPerJob int
}

func (l Limits) maxFiles() int {
	if l.MaxFilesPerJob <= 0 {
		return DefaultMaxFilesPerJob
	}
	return l.MaxFilesPerJob
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
		// Nil means the default; values below the 5 s floor are raised.
		MinimumRetryDelay *time.Duration
		NoProgressTimeout *time.Duration
		Files             []events.FileSpec
		Limits            Limits
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
		Agent string
		Error events.ErrorInfo
	}
	// FilesDeleted reports the cleanup after Cancel.
	FilesDeleted struct {
		Agent     string
		Undeleted []string
	}
)

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
		if err := checkFiles(c.Files, len(j.Files), c.Limits, false); err != nil {
			return nil, err
		}
		return one(&events.FilesAdded{Files: c.Files}), nil
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
		return one(&events.JobQueued{Reason: "resume"}), nil
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
			SHA256: c.SHA256, TempName: c.TempName, ETag: c.ETag, LastModified: c.LastModified}}
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
		return one(&events.JobTransientError{Error: c.Error, RetryAt: now.Add(delay).UTC()}), nil
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
		return one(&events.JobCompleteFailed{Error: c.Error}), nil
	case SetClientCertificate:
		return decideSetCert(j, c)
	case RemoveClientCertificate:
		return decideRemoveCert(j, c)
	case TakeOwnership:
		return decideTakeOwnership(j, c)
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
	rp := events.RetryPolicy{
		MinimumRetryDelaySec: int64(DefaultMinimumRetryDelay / time.Second),
		NoProgressTimeoutSec: int64(DefaultNoProgressTimeout / time.Second),
	}
	if err := applyRetry(&rp, c.MinimumRetryDelay, c.NoProgressTimeout); err != nil {
		return nil, err
	}
	if err := checkFiles(c.Files, 0, c.Limits, true); err != nil {
		return nil, err
	}
	out := []events.Payload{&events.JobCreated{
		JobID: c.JobID, DisplayName: c.DisplayName, Description: c.Description,
		JobType: TypeDownload, Owner: c.Owner, Priority: string(prio), Pool: pool, RetryPolicy: rp,
	}}
	if len(c.Files) > 0 {
		out = append(out, &events.FilesAdded{Files: c.Files})
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
	if c.MinimumRetryDelay != nil || c.NoProgressTimeout != nil {
		rp := j.RetryPolicy
		if err := applyRetry(&rp, c.MinimumRetryDelay, c.NoProgressTimeout); err != nil {
			return nil, err
		}
		if rp != j.RetryPolicy {
			ev.RetryPolicy, changed = &rp, true
		}
	}
	if !changed {
		return nil, nil
	}
	return one(ev), nil
}

func applyRetry(rp *events.RetryPolicy, minDelay, noProgress *time.Duration) error {
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
	lease := &events.JobLeased{Agent: c.Agent, Attempt: j.Attempt + 1, DispatchSeq: c.DispatchSeq}
	switch {
	case j.State.Active() && !j.PendingComplete:
		// QUEUED, or a takeover of an attempt whose agent went away.
		return one(lease), nil
	case j.State == TransientError && j.RetryAt != nil && !now.Before(*j.RetryAt):
		return []events.Payload{&events.JobQueued{Reason: "retry"}, lease}, nil
	}
	return nil, invalidState(j, c)
}

func checkFiles(files []events.FileSpec, have int, l Limits, allowEmpty bool) error {
	if len(files) == 0 && !allowEmpty {
		return Errorf(RPC_X_NULL_REF_POINTER, "no files given")
	}
	if have+len(files) > l.maxFiles() {
		return Errorf(BG_E_TOO_MANY_FILES_IN_JOB, "a job holds at most %d files (it has %d, %d more asked)", l.maxFiles(), have, len(files))
	}
	for i, f := range files {
		if err := ValidateFile(f); err != nil {
			if e, ok := err.(*Error); ok {
				e.Detail = fmt.Sprintf("file %d: %s", have+i, e.Detail)
			}
			return err
		}
	}
	return nil
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
