package notify

import (
	"encoding/json"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// FlagFor returns the BG_NOTIFY_* flag an event of type typ raises, or ""
// when it raises none.
//
// JOB_MODIFICATION is raised by the events that change a job's state or its
// properties. FileProgressed is deliberately left out: progress checkpoints
// come every second or 64 MiB of every running job and would flood the
// webhooks; a receiver that wants live progress reads the job. So are the
// events that change nothing a job owner sees (JobCreated comes before any
// notification could be configured, JobLeased, JobCompleteFailed and
// JobFilesDeleted are bookkeeping between the coordinator and the agents).
func FlagFor(typ string) string {
	switch typ {
	case events.TypeFileTransferred:
		return job.NotifyFileTransferred
	case events.TypeJobTransferred:
		return job.NotifyJobTransferred
	case events.TypeJobFailed:
		return job.NotifyJobError
	case events.TypeFilesAdded,
		events.TypeJobModified,
		events.TypeJobQueued,
		events.TypeJobSuspended,
		events.TypeJobConnecting,
		events.TypeJobTransferring,
		events.TypeJobTransientError,
		events.TypeJobCompleteRequested,
		events.TypeJobAcknowledged,
		events.TypeJobCancelled,
		events.TypeClientCertificateSet,
		events.TypeClientCertificateRemoved,
		events.TypeJobOwnerChanged:
		return job.NotifyJobModification
	}
	return ""
}

// Notification is the JSON body of every webhook request. Its field names
// are a public API (docs/notifications.md): they never change meaning.
type Notification struct {
	// ID is the event's ID (also in the Ferry-Event-Id header): the same
	// on every delivery of this notification, so receivers de-duplicate
	// on it.
	ID string `json:"id"`
	// Seq is the event's sequence in the event log. Within one job it
	// orders notifications: a higher seq is a later event.
	Seq uint64 `json:"seq"`
	// Type is the event type, e.g. "JobTransferred".
	Type string `json:"type"`
	// Flag is the BG_NOTIFY_* flag the event raised, e.g. "JOB_TRANSFERRED".
	Flag  string `json:"flag"`
	JobID string `json:"job_id"`
	// State is the job's state right after the event.
	State job.State `json:"state"`
	// Time is when the event happened (UTC).
	Time time.Time `json:"time"`
	// FileIndex is the file a FILE_TRANSFERRED notification is about.
	FileIndex *int `json:"file_index,omitempty"`
	// Job is a summary of the job right after the event.
	Job JobSummary `json:"job"`
}

// JobSummary is the part of a job a notification carries. It leaves out
// everything that might be sensitive (options, custom headers, owner,
// files' URLs and paths): receivers that need more read the job through the
// API with their own credentials.
type JobSummary struct {
	ID          string            `json:"id"`
	DisplayName string            `json:"display_name"`
	State       job.State         `json:"state"`
	Priority    job.Priority      `json:"priority"`
	Progress    job.Progress      `json:"progress"`
	Error       *events.ErrorInfo `json:"error,omitempty"`
}

// newNotification builds the notification of ev, which raised flag, for j,
// the job's state right after ev.
func newNotification(ev *events.Event, flag string, j *job.Job) Notification {
	n := Notification{
		ID: ev.ID.String(), Seq: ev.Seq, Type: ev.Type, Flag: flag,
		JobID: ev.AggregateID, State: j.State, Time: ev.Time.UTC(),
		Job: JobSummary{
			ID: j.ID, DisplayName: j.DisplayName, State: j.State,
			Priority: j.Priority, Progress: j.Progress,
		},
	}
	if j.Error != nil {
		e := *j.Error
		n.Job.Error = &e
	}
	if p, err := ev.Payload(); err == nil {
		if ft, ok := p.(*events.FileTransferred); ok {
			i := ft.FileIndex
			n.FileIndex = &i
		}
	}
	return n
}

// delivery is one notification ready to be sent: where, and the exact bytes
// (the same on every attempt, so the signature covers what the receiver
// de-duplicates).
type delivery struct {
	seq   uint64
	id    string
	jobID string
	flag  string
	url   string
	body  []byte
}

func newDelivery(ev *events.Event, flag string, j *job.Job) (*delivery, error) {
	body, err := json.Marshal(newNotification(ev, flag, j))
	if err != nil {
		return nil, err
	}
	return &delivery{
		seq: ev.Seq, id: ev.ID.String(), jobID: ev.AggregateID, flag: flag,
		url: j.Options.Notify.URL, body: body,
	}, nil
}
