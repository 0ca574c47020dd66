package services

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job/history"
)

// EventLine is one line of `ferry events tail -o json` (NDJSON): the event
// envelope as stored, plus its stream sequence.
type EventLine struct {
	Seq uint64 `json:"seq"`
	events.Event
}

// SinceArg turns the --since of `ferry events tail` into the RFC 3339 time
// the API takes: a duration (90m, 2h) counts back from now; anything else is
// passed on for the coordinator to check.
func SinceArg(s string, now time.Time) string {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d).UTC().Format(time.RFC3339Nano)
	}
	return s
}

// TailEvents is `ferry events tail`: the events of the log that q selects,
// one line each, until the end of the log (or, with q.Follow, until ctx
// ends).
func (c *CLI) TailEvents(ctx context.Context, q EventQuery) error {
	enc := json.NewEncoder(c.Out)
	return c.Client.EventLog(ctx, q, func(ev events.Event) error {
		if c.JSON {
			return enc.Encode(EventLine{Seq: ev.Seq, Event: ev})
		}
		_, err := fmt.Fprintln(c.Out, EventText(&ev))
		return err
	})
}

// EventText is one event for people: time, sequence, type, job (or the
// aggregate of an agent or vault event), actor, and what it says.
func EventText(ev *events.Event) string {
	agg := ev.AggregateID
	if ev.Kind != events.KindJob {
		agg = ev.Kind + "/" + ev.AggregateID
	}
	return fmt.Sprintf("%s %7d  %-22s %-36s  %-14s %s",
		ev.Time.Local().Format("2006-01-02 15:04:05.000"), ev.Seq, ev.Type, agg, orDash(principalText(ev.Actor)), eventSummary(ev))
}

// principalText drops the spiffe://<trust-domain>/ of a principal:
// "user/alice", "agent/host-a". Anything else stays as it is.
func principalText(p string) string {
	if rest, ok := strings.CutPrefix(p, "spiffe://"); ok {
		if _, path, ok := strings.Cut(rest, "/"); ok {
			return path
		}
	}
	return p
}

// eventSummary says in a few words what an event's data holds. Unlike the
// lines of `job watch` it needs no job state, so it reads any event alone.
// Header values and key material are never in events; custom headers show
// by name only.
func eventSummary(ev *events.Event) string {
	p, err := ev.Payload()
	if err != nil {
		return fmt.Sprintf("(v%d: not understood by this ferry)", ev.Version)
	}
	if s, ok := describeCert(p); ok {
		return s
	}
	switch e := p.(type) {
	case *events.JobCreated:
		if e.Agent != "" {
			return fmt.Sprintf("%q owner %s, priority %s, agent %s only", e.DisplayName, principalText(e.Owner), e.Priority, e.Agent)
		}
		return fmt.Sprintf("%q owner %s, priority %s, pool %s", e.DisplayName, principalText(e.Owner), e.Priority, e.Pool)
	case *events.FilesAdded:
		switch len(e.Files) {
		case 0:
			return "no files"
		case 1:
			return fmt.Sprintf("%s -> %s", e.Files[0].RemoteURL, e.Files[0].LocalName)
		}
		return fmt.Sprintf("%d files, first %s -> %s", len(e.Files), e.Files[0].RemoteURL, e.Files[0].LocalName)
	case *events.JobModified:
		var parts []string
		if e.DisplayName != nil {
			parts = append(parts, fmt.Sprintf("name %q", *e.DisplayName))
		}
		if e.Description != nil {
			parts = append(parts, "description")
		}
		if e.Priority != nil {
			parts = append(parts, "priority "+*e.Priority)
		}
		if e.RetryPolicy != nil {
			parts = append(parts, "retry policy")
		}
		if e.Options != nil {
			o := optionsText(*e.Options)
			if o == "" {
				o = "defaults"
			}
			parts = append(parts, "options: "+o)
		}
		if e.Reason != "" {
			parts = append(parts, "("+e.Reason+")")
		}
		return strings.Join(parts, ", ")
	case *events.JobQueued:
		return e.Reason
	case *events.JobSuspended:
		return ""
	case *events.JobLeased:
		s := fmt.Sprintf("agent %s, attempt %d", e.Agent, e.Attempt)
		if e.PreviousAgent != "" {
			s += ", taken over from " + e.PreviousAgent
		}
		return s
	case *events.JobConnecting:
		return fmt.Sprintf("agent %s, file %d", e.Agent, e.FileIndex)
	case *events.JobTransferring:
		s := fmt.Sprintf("agent %s, file %d, %s", e.Agent, e.FileIndex, history.SizeText(e.BytesTotal))
		if e.Offset > 0 {
			s += ", from " + history.SizeText(e.Offset)
		}
		if e.Restarted != "" {
			s += ", restarted: " + e.Restarted
		}
		return s
	case *events.FileProgressed:
		return fmt.Sprintf("file %d: %s", e.FileIndex, bytesText(e.BytesTransferred, e.BytesTotal))
	case *events.FileTransferred:
		return fmt.Sprintf("file %d: %s, sha256 %s", e.FileIndex, history.SizeText(e.Bytes), e.SHA256)
	case *events.JobTransferred:
		return ""
	case *events.JobTransientError:
		s := fmt.Sprintf("%s: %s; retry at %s", e.Error.Code, e.Error.Description, e.RetryAt.Local().Format(time.TimeOnly))
		if e.Attempt > 0 {
			s += fmt.Sprintf(" (attempt %d)", e.Attempt)
		}
		return s
	case *events.JobFailed:
		return fmt.Sprintf("%s in %s: %s", e.Error.Code, e.Error.Context, e.Error.Description)
	case *events.JobCompleteRequested:
		return orDash(e.Agent)
	case *events.JobAcknowledged:
		if e.Partial {
			return fmt.Sprintf("%d file(s) renamed, BG_S_PARTIAL_COMPLETE", len(e.Files))
		}
		return fmt.Sprintf("%d file(s) renamed", len(e.Files))
	case *events.JobCompleteFailed:
		return fmt.Sprintf("%s: %s", e.Error.Code, e.Error.Description)
	case *events.JobCancelled:
		if e.Reason != "" {
			return e.Reason
		}
		return ""
	case *events.JobFilesDeleted:
		if len(e.Undeleted) > 0 {
			return fmt.Sprintf("agent %s, %d not deleted", e.Agent, len(e.Undeleted))
		}
		return "agent " + e.Agent
	case *events.AgentJoined:
		return fmt.Sprintf("pool %s, %d slots, %s", e.Pool, e.Slots, e.Version)
	case *events.AgentLeft:
		return e.Reason
	case *events.CertificateImported:
		return fmt.Sprintf("%s\\%s sha1 %s %s", e.Location, e.Store, e.SHA1, e.Subject)
	case *events.CertificateRemoved:
		return fmt.Sprintf("%s\\%s sha1 %s", e.Location, e.Store, e.SHA1)
	case *events.KeyReleased:
		return fmt.Sprintf("sha1 %s to %s for job %s", e.SHA1, principalText(e.Agent), e.Job)
	case *events.KeyReleaseDenied:
		return fmt.Sprintf("sha1 %s to %s: %s (%s)", e.SHA1, principalText(e.Agent), e.Code, e.Reason)
	case *events.VaultKeysRewrapped:
		return fmt.Sprintf("%d records to key version %d", e.Rewrapped, e.ActiveVersion)
	case *events.WriteOnlyHeadersStored:
		return fmt.Sprintf("job %s: %s", e.Job, strings.Join(e.Names, ", "))
	case *events.WriteOnlyHeadersDeleted:
		return fmt.Sprintf("job %s: %s (%s)", e.Job, strings.Join(e.Names, ", "), e.Reason)
	case *events.WriteOnlyHeadersReleased:
		return fmt.Sprintf("job %s: %s to %s", e.Job, strings.Join(e.Names, ", "), principalText(e.Agent))
	case *events.WriteOnlyHeadersReleaseDenied:
		return fmt.Sprintf("job %s to %s: %s (%s)", e.Job, principalText(e.Agent), e.Code, e.Reason)
	}
	return ""
}
