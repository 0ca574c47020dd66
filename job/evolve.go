package job

import (
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// Evolve applies one stored event to the job's state. It is pure and total:
// an event of an unknown type is an error (the state is left unchanged), so
// replay never silently skips history.
func Evolve(j *Job, ev *events.Event) error {
	p, err := ev.Payload()
	if err != nil {
		return err
	}
	if err := Apply(j, p, ev.Time); err != nil {
		return fmt.Errorf("job: apply %s (seq %d): %w", ev.Type, ev.Seq, err)
	}
	if ev.Seq != 0 {
		j.Version = ev.Seq
	}
	return nil
}

// Apply applies a payload at time t. Evolve calls it; writers use it to evolve
// their state with the events they just appended, without reloading.
func Apply(j *Job, p events.Payload, t time.Time) error {
	t = t.UTC()
	switch e := p.(type) {
	case *events.JobCreated:
		*j = Job{
			ID: e.JobID, DisplayName: e.DisplayName, Description: e.Description,
			Type: e.JobType, Owner: e.Owner, Pool: e.Pool, TargetAgent: e.Agent, State: Suspended,
			Priority: Priority(e.Priority), RetryPolicy: e.RetryPolicy, Options: cloneOptions(e.Options),
			Files: []File{}, Times: Times{Creation: t}, LastProgress: t, Version: j.Version,
		}
	case *events.FilesAdded:
		for _, f := range e.Files {
			total := SizeUnknown
			if len(f.Ranges) > 0 {
				total = RangesTotal(f.Ranges)
			}
			j.Files = append(j.Files, File{RemoteURL: f.RemoteURL, LocalName: f.LocalName, BytesTotal: total,
				Ranges: append([]events.FileRange(nil), f.Ranges...), ExpectedSHA256: f.SHA256})
		}
	case *events.JobModified:
		if e.DisplayName != nil {
			j.DisplayName = *e.DisplayName
		}
		if e.Description != nil {
			j.Description = *e.Description
		}
		if e.Priority != nil {
			j.Priority = Priority(*e.Priority)
		}
		if e.RetryPolicy != nil {
			j.RetryPolicy = *e.RetryPolicy
		}
		if e.Options != nil {
			j.Options = cloneOptions(*e.Options)
		}
	case *events.JobQueued:
		j.stopClock(t)
		j.State, j.Agent, j.RetryAt, j.Error = Queued, "", nil, nil
		if e.Reason == QueuedResume {
			// Resume restarts the no-progress clock and the download time.
			j.LastProgress, j.DownloadTime, j.Resumed = t, 0, true
		}
	case *events.JobSuspended:
		j.stopClock(t)
		j.State, j.Agent, j.RetryAt = Suspended, "", nil
	case *events.JobLeased:
		if j.FilesAgent != "" && j.FilesAgent != e.Agent {
			// Staged bytes live on the previous host: the new holder starts
			// every file again.
			for i := range j.Files {
				f := &j.Files[i]
				f.Transferred, f.BytesTransferred, f.TempName, f.SHA256 = false, 0, "", ""
			}
			j.CurrentFile = 0
		}
		j.Agent, j.Attempt, j.FilesAgent = e.Agent, e.Attempt, e.Agent
	case *events.JobConnecting:
		if err := checkIndex(j, e.FileIndex); err != nil {
			return err
		}
		j.State, j.CurrentFile = Connecting, e.FileIndex
		j.startClock(t)
	case *events.JobTransferring:
		if err := checkIndex(j, e.FileIndex); err != nil {
			return err
		}
		f := &j.Files[e.FileIndex]
		j.State, j.CurrentFile = Transferring, e.FileIndex
		j.startClock(t)
		f.BytesTotal, f.BytesTransferred = e.BytesTotal, e.Offset
		if e.Offset > 0 || e.Restarted != "" {
			j.LastProgress = t
		}
	case *events.FileProgressed:
		if err := checkIndex(j, e.FileIndex); err != nil {
			return err
		}
		f := &j.Files[e.FileIndex]
		if e.BytesTransferred > f.BytesTransferred {
			j.LastProgress = t
		}
		f.BytesTransferred, f.BytesTotal = e.BytesTransferred, e.BytesTotal
	case *events.FileTransferred:
		if err := checkIndex(j, e.FileIndex); err != nil {
			return err
		}
		f := &j.Files[e.FileIndex]
		f.Transferred, f.BytesTransferred, f.BytesTotal = true, e.Bytes, e.Bytes
		f.SHA256, f.TempName, f.ETag, f.LastModified = e.SHA256, e.TempName, e.ETag, e.LastModified
		f.ResponseHeaders, f.FinalURL = e.ResponseHeaders, e.FinalURL
		j.LastProgress = t
		if next := j.NextFile(); next >= 0 {
			j.CurrentFile = next
		}
	case *events.JobTransferred:
		j.stopClock(t)
		j.State, j.Agent = Transferred, ""
		tc := t
		j.Times.TransferCompletion = &tc
	case *events.JobTransientError:
		j.stopClock(t)
		j.State, j.Agent, j.ErrorCount = TransientError, "", j.ErrorCount+1
		ei, at := e.Error, e.RetryAt.UTC()
		j.Error, j.RetryAt = &ei, &at
	case *events.JobFailed:
		j.stopClock(t)
		j.State, j.Agent, j.ErrorCount, j.RetryAt = Errored, "", j.ErrorCount+1, nil
		ei := e.Error
		j.Error = &ei
	case *events.JobCompleteRequested:
		// The lease ends: an agent still transferring is fenced off.
		j.stopClock(t)
		j.PendingComplete, j.Agent = true, ""
	case *events.JobAcknowledged:
		for _, i := range e.Files {
			if err := checkIndex(j, i); err != nil {
				return err
			}
			j.Files[i].Completed = true
		}
		j.State, j.PendingComplete, j.Agent, j.RetryAt = Acknowledged, false, "", nil
	case *events.JobCompleteFailed:
		for _, i := range e.Renamed {
			if err := checkIndex(j, i); err != nil {
				return err
			}
			j.Files[i].Renamed = true
		}
		j.PendingComplete = false
		ei := e.Error
		j.Error = &ei
	case *events.JobCancelled:
		j.stopClock(t)
		j.State, j.Agent, j.RetryAt, j.PendingComplete = Cancelled, "", nil, false
		j.PendingCleanup = e.Agent != ""
	case *events.JobFilesDeleted:
		j.PendingCleanup = false
	case *events.ClientCertificateSet:
		j.ClientCertificate = &CertRef{Location: e.Location, Store: e.Store, SHA1: e.SHA1, Subject: e.Subject}
	case *events.ClientCertificateRemoved:
		j.ClientCertificate = nil
	case *events.JobOwnerChanged:
		j.Owner = e.To
	default:
		return fmt.Errorf("job: no rule for event %s", p.EventType())
	}
	j.Times.Modification = t
	j.recomputeProgress()
	return nil
}

// startClock starts counting download time (CONNECTING, TRANSFERRING).
func (j *Job) startClock(t time.Time) {
	if j.ActiveSince == nil {
		at := t
		j.ActiveSince = &at
	}
}

// stopClock adds the current stretch of download time, if any.
func (j *Job) stopClock(t time.Time) {
	if j.ActiveSince != nil {
		if t.After(*j.ActiveSince) {
			j.DownloadTime += t.Sub(*j.ActiveSince)
		}
		j.ActiveSince = nil
	}
}

func checkIndex(j *Job, i int) error {
	if i < 0 || i >= len(j.Files) {
		return fmt.Errorf("file index %d out of range (%d files)", i, len(j.Files))
	}
	return nil
}

func (j *Job) recomputeProgress() {
	p := Progress{FilesTotal: len(j.Files)}
	known := true
	for i := range j.Files {
		f := &j.Files[i]
		p.BytesTransferred += f.BytesTransferred
		if f.BytesTotal < 0 {
			known = false
		} else {
			p.BytesTotal += f.BytesTotal
		}
		if f.Transferred {
			p.FilesTransferred++
		}
	}
	if !known {
		p.BytesTotal = SizeUnknown
	}
	j.Progress = p
}

// Replay builds a job's state from its events in order.
func Replay(evs []events.Event) (Job, error) {
	var j Job
	for i := range evs {
		if err := Evolve(&j, &evs[i]); err != nil {
			return j, err
		}
	}
	return j, nil
}

// NewEvents wraps the payloads of one decision into events of job id, with
// fresh IDs (made once here and kept for every retry of the append).
func NewEvents(id string, m events.Meta, ps []events.Payload) ([]events.Event, error) {
	out := make([]events.Event, len(ps))
	for i, p := range ps {
		ev, err := events.New(events.KindJob, id, m, p)
		if err != nil {
			return nil, err
		}
		out[i] = ev
	}
	if err := events.AssignIDs(out); err != nil {
		return nil, err
	}
	return out, nil
}
