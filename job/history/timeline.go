package history

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// Entry is one event of a job's timeline, with what a person needs to
// understand it without reading the event: who did it, on which agent and
// lease attempt, how the state moved, and for failures and retries the
// error and when the job retries.
type Entry struct {
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Version int       `json:"v"`
	ID      string    `json:"id"`
	// Actor is the principal that caused the event: a user, an agent
	// (agent/<id>), or service/coordinator for what time decided.
	Actor         string `json:"actor,omitempty"`
	CorrelationID string `json:"correlation_id,omitempty"`
	// Agent is the host the event concerns: the one it names, else the
	// holder of the job's lease when it happened.
	Agent string `json:"agent,omitempty"`
	// Attempt is the lease attempt the event belongs to (0: none).
	Attempt int `json:"attempt,omitempty"`
	// From and To are the job's state before and after the event (From
	// is empty for the event that created the job).
	From job.State `json:"from,omitempty"`
	To   job.State `json:"to"`
	// Summary says in words what happened.
	Summary string `json:"summary"`
	// Reason is the event's own reason, if it has one: why the job was
	// queued or cancelled, why a certificate was removed, why a transfer
	// restarted from zero.
	Reason string `json:"reason,omitempty"`
	// Error is the error of a JobTransientError, JobFailed or
	// JobCompleteFailed.
	Error *events.ErrorInfo `json:"error,omitempty"`
	// RetryAt is when a TRANSIENT_ERROR job retries; RetryAfterSec the
	// wait the writer recorded (absent in JobTransientError v1: see
	// docs/events.md).
	RetryAt       *time.Time `json:"retry_at,omitempty"`
	RetryAfterSec int64      `json:"retry_after_s,omitempty"`
	// Retry numbers the automatic retries (JobQueued reason "retry"): 1
	// for the first.
	Retry int `json:"retry,omitempty"`
	// Cause is, for a job queued again after an error (a retry, or a
	// user's resume), the error it leaves behind.
	Cause *events.ErrorInfo `json:"cause,omitempty"`
	// ErrorCount is the job's error count after the event.
	ErrorCount int `json:"error_count,omitempty"`
	// Deliveries is, for a JobLeased whose dispatch JetStream delivered
	// more than once (redelivered after AckWait or a hand back), the
	// delivery count the agent recorded; absent for a first delivery or
	// when unknown.
	Deliveries int `json:"deliveries,omitempty"`
}

// timeline carries what entries need across events.
type timeline struct {
	retries int
}

// step applies ev to j and describes it.
func (tl *timeline) step(j *job.Job, ev *events.Event) (Entry, error) {
	before := *j // shallow: only scalars and the current error are read
	e := Entry{Seq: ev.Seq, Time: ev.Time, Type: ev.Type, Version: ev.Version, ID: ev.ID.String(),
		Actor: ev.Actor, CorrelationID: ev.CorrelationID, From: before.State, Agent: before.Agent}
	if before.Agent != "" {
		e.Attempt = before.Attempt
	}
	p, err := ev.Payload()
	if err != nil {
		return Entry{}, err
	}
	if err := job.Evolve(j, ev); err != nil {
		return Entry{}, err
	}
	e.To, e.ErrorCount = j.State, j.ErrorCount
	e.Summary = tl.describe(&e, &before, j, p)
	return e, nil
}

// describe fills the entry's fields that depend on the payload and returns
// its summary. before and after are the job's states around the event.
func (tl *timeline) describe(e *Entry, before, after *job.Job, p events.Payload) string {
	switch x := p.(type) {
	case *events.JobCreated:
		rp := x.RetryPolicy
		where := "pool " + x.Pool
		if x.Agent != "" {
			where = "agent " + x.Agent + " only (pool " + x.Pool + ")"
		}
		return fmt.Sprintf("created %q for %s: priority %s, %s, minimum retry delay %s, no-progress timeout %s",
			x.DisplayName, x.Owner, x.Priority, where, SecondsText(rp.MinimumRetryDelaySec), SecondsText(rp.NoProgressTimeoutSec))
	case *events.FilesAdded:
		if len(x.Files) == 1 {
			return fmt.Sprintf("file %d added: %s -> %s", len(after.Files)-1, x.Files[0].RemoteURL, x.Files[0].LocalName)
		}
		return fmt.Sprintf("%d files added (%d to %d), first %s -> %s", len(x.Files), len(before.Files), len(after.Files)-1,
			x.Files[0].RemoteURL, x.Files[0].LocalName)
	case *events.JobModified:
		e.Reason = x.Reason
		return modifiedText(x)
	case *events.JobQueued:
		e.Reason = x.Reason
		var s string
		switch x.Reason {
		case job.QueuedRetry:
			tl.retries++
			e.Retry = tl.retries
			s = fmt.Sprintf("retry %d", tl.retries)
		case job.QueuedResume:
			s = "resumed by " + orUnknown(e.Actor)
		case job.QueuedPreempted:
			s = "queued again: the agent gave its slot to higher-priority work (staged files stay on it)"
		default:
			s = "queued (" + x.Reason + ")"
		}
		if before.Error != nil && (before.State == job.TransientError || before.State == job.Errored) {
			c := *before.Error
			e.Cause = &c
			s += " after " + errorText(&c)
		}
		return s
	case *events.JobSuspended:
		return "suspended by " + orUnknown(e.Actor)
	case *events.JobLeased:
		e.Agent, e.Attempt = x.Agent, x.Attempt
		s := fmt.Sprintf("leased by agent %s, attempt %d (dispatched at sequence %d)", x.Agent, x.Attempt, x.DispatchSeq)
		if x.Deliveries > 1 {
			e.Deliveries = x.Deliveries
			s += fmt.Sprintf(", delivery %d of the dispatch", x.Deliveries)
		}
		if prev := previousAgent(x, before); prev != "" {
			s += fmt.Sprintf("; it takes over from agent %s (attempt %d)", prev, before.Attempt)
		}
		if before.FilesAgent != "" && before.FilesAgent != x.Agent {
			s += "; the staged files were on " + before.FilesAgent + ", so every file starts again"
		}
		return s
	case *events.JobConnecting:
		e.Agent = x.Agent
		return fmt.Sprintf("connecting for file %d: %s", x.FileIndex, fileURL(after, x.FileIndex))
	case *events.JobTransferring:
		e.Agent, e.Reason = x.Agent, x.Restarted
		s := fmt.Sprintf("transferring file %d: %s", x.FileIndex, SizeText(x.BytesTotal))
		if x.Offset > 0 {
			s += ", resuming at " + SizeText(x.Offset)
		}
		if x.Restarted != "" {
			s += ", restarted from zero: " + x.Restarted
		}
		return s
	case *events.FileProgressed:
		return fmt.Sprintf("file %d: %s staged", x.FileIndex, bytesText(x.BytesTransferred, x.BytesTotal))
	case *events.FileTransferred:
		return fmt.Sprintf("file %d staged: %s, sha256 %s", x.FileIndex, SizeText(x.Bytes), x.SHA256)
	case *events.JobTransferred:
		return fmt.Sprintf("%s transferred (%s)", files(after.Progress.FilesTotal), SizeText(after.Progress.BytesTransferred))
	case *events.JobTransientError:
		ei := x.Error
		e.Error = &ei
		if x.Attempt != 0 {
			e.Attempt = x.Attempt
		}
		at := x.RetryAt.UTC()
		e.RetryAt, e.RetryAfterSec = &at, x.RetryAfterSec
		wait := x.RetryAt.Sub(e.Time)
		if x.RetryAfterSec > 0 {
			wait = time.Duration(x.RetryAfterSec) * time.Second
		}
		return fmt.Sprintf("transient error %s; retry at %s (in %s)", errorText(&ei), at.Format(time.RFC3339), wait.Round(time.Second))
	case *events.JobFailed:
		ei := x.Error
		e.Error = &ei
		return "failed: " + errorText(&ei)
	case *events.JobCompleteRequested:
		e.Agent = x.Agent
		if x.Agent == "" {
			return "complete requested by " + orUnknown(e.Actor)
		}
		return fmt.Sprintf("complete requested by %s; agent %s renames the files", orUnknown(e.Actor), x.Agent)
	case *events.JobAcknowledged:
		e.Agent = before.FilesAgent // the host that renamed them
		if x.Partial {
			return fmt.Sprintf("completed: %d of %s made visible (BG_S_PARTIAL_COMPLETE)", len(x.Files), files(len(after.Files)))
		}
		return fmt.Sprintf("completed: %s made visible", files(len(x.Files)))
	case *events.JobCompleteFailed:
		e.Agent = before.FilesAgent
		ei := x.Error
		e.Error = &ei
		s := "complete failed: " + errorText(&ei)
		if len(x.Renamed) > 0 {
			s += fmt.Sprintf("; files %v were renamed already", x.Renamed)
		}
		return s
	case *events.JobCancelled:
		e.Agent, e.Reason = x.Agent, x.Reason
		s := "cancelled by " + orUnknown(e.Actor)
		if x.Reason == events.CancelledInactivity {
			s = "cancelled: nothing happened to the job for its inactivity timeout"
		}
		if x.Agent != "" {
			s += "; agent " + x.Agent + " deletes the temporary files"
		}
		return s
	case *events.JobFilesDeleted:
		e.Agent = x.Agent
		if len(x.Undeleted) > 0 {
			return fmt.Sprintf("temporary files deleted on %s, except %s (BG_S_UNABLE_TO_DELETE_FILES)", x.Agent, files(len(x.Undeleted)))
		}
		return "temporary files deleted on " + x.Agent
	case *events.ClientCertificateSet:
		by := "thumbprint"
		if x.By == "name" {
			by = "subject name"
		}
		return fmt.Sprintf(`client certificate set by %s: %s\%s %s (%s)`, by, x.Location, x.Store, x.SHA1, x.Subject)
	case *events.ClientCertificateRemoved:
		e.Reason = x.Reason
		if x.Reason == events.CertRemovedOwnershipMoved {
			return "client certificate removed: the job changed owner"
		}
		return "client certificate removed by " + orUnknown(e.Actor)
	case *events.JobOwnerChanged:
		return fmt.Sprintf("ownership taken by %s (was %s)", x.To, x.From)
	}
	return e.Type
}

// previousAgent is the agent a lease takes the job over from, or "". The
// event says so itself (previous_agent); a JobLeased recorded before that
// field existed does not, and then it is the holder the state names, the
// same rule job.Decide applies when it writes the field.
func previousAgent(x *events.JobLeased, before *job.Job) string {
	if x.PreviousAgent != "" {
		return x.PreviousAgent
	}
	if before.Agent != "" && before.Agent != x.Agent {
		return before.Agent
	}
	return ""
}

func modifiedText(x *events.JobModified) string {
	var parts []string
	if x.DisplayName != nil {
		parts = append(parts, fmt.Sprintf("display name %q", *x.DisplayName))
	}
	if x.Description != nil {
		parts = append(parts, "description")
	}
	if x.Priority != nil {
		parts = append(parts, "priority "+*x.Priority)
	}
	if rp := x.RetryPolicy; rp != nil {
		parts = append(parts, fmt.Sprintf("retry policy (minimum retry delay %s, no-progress timeout %s, max download time %s)",
			SecondsText(rp.MinimumRetryDelaySec), SecondsText(rp.NoProgressTimeoutSec), SecondsText(rp.MaxDownloadTimeSec)))
	}
	if o := x.Options; o != nil {
		s := "options"
		// Header values may carry secrets: names only.
		if len(o.CustomHeaders) > 0 {
			s += " (custom headers " + strings.Join(job.HeaderNames(o.CustomHeaders), ", ") + ")"
		}
		parts = append(parts, s)
	}
	s := "changed " + strings.Join(parts, ", ")
	if len(parts) == 0 {
		s = "changed nothing"
	}
	if x.Reason == "ownership-changed" {
		s += ": the job changed owner, so its custom headers were removed"
	}
	return s
}

func errorText(e *events.ErrorInfo) string {
	s := fmt.Sprintf("%s (%s) in %s", e.Code, e.HResult, strings.TrimPrefix(e.Context, "BG_ERROR_CONTEXT_"))
	if e.FileIndex >= 0 {
		s += fmt.Sprintf(", file %d", e.FileIndex)
	}
	if e.Description != "" {
		s += ": " + e.Description
	}
	return s
}

func files(n int) string {
	if n == 1 {
		return "1 file"
	}
	return fmt.Sprintf("%d files", n)
}

func fileURL(j *job.Job, i int) string {
	if i >= 0 && i < len(j.Files) {
		return j.Files[i].RemoteURL
	}
	return "?"
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}

// SecondsText is a whole number of seconds for people: "1m30s", or "none"
// for 0 or less (a limit that is off). The CLI's job view uses it too.
func SecondsText(s int64) string {
	if s <= 0 {
		return "none"
	}
	return (time.Duration(s) * time.Second).String()
}

// SizeText is a byte count for people in binary units ("512 B", "1.5
// MiB"), or "size unknown" for a negative count. The CLI's job views and
// event lines use it too, so a size reads the same everywhere.
func SizeText(n int64) string {
	if n < 0 {
		return "size unknown"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func bytesText(done, total int64) string {
	if total < 0 {
		return SizeText(done) + " of ?"
	}
	return SizeText(done) + " of " + SizeText(total)
}
