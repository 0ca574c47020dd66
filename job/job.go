package job

import (
	"fmt"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/events"
)

// State is a BG_JOB_STATE, by its exact BITS name.
type State string

// The nine BITS job states.
const (
	Queued         State = "QUEUED"
	Connecting     State = "CONNECTING"
	Transferring   State = "TRANSFERRING"
	Suspended      State = "SUSPENDED"
	Errored        State = "ERROR"
	TransientError State = "TRANSIENT_ERROR"
	Transferred    State = "TRANSFERRED"
	Acknowledged   State = "ACKNOWLEDGED"
	Cancelled      State = "CANCELLED"
)

// States lists every state in BG_JOB_STATE order.
var States = []State{Queued, Connecting, Transferring, Suspended, Errored, TransientError, Transferred, Acknowledged, Cancelled}

// Final reports whether no command can change the job any more.
func (s State) Final() bool { return s == Acknowledged || s == Cancelled }

// Active reports whether the job is queued for or held by an agent.
func (s State) Active() bool { return s == Queued || s == Connecting || s == Transferring }

// Priority is a BG_JOB_PRIORITY by its BITS name.
type Priority string

// The four BITS priorities, highest first.
const (
	Foreground Priority = "FOREGROUND"
	High       Priority = "HIGH"
	Normal     Priority = "NORMAL"
	Low        Priority = "LOW"
)

// ParsePriority accepts a priority name in any case; "" is NORMAL.
func ParsePriority(s string) (Priority, error) {
	switch p := Priority(strings.ToUpper(strings.TrimSpace(s))); p {
	case "":
		return Normal, nil
	case Foreground, High, Normal, Low:
		return p, nil
	}
	return "", Errorf(E_INVALIDARG, "priority %q is not one of FOREGROUND, HIGH, NORMAL, LOW", s)
}

// Rank orders priorities: 0 is FOREGROUND, 3 is LOW.
func (p Priority) Rank() int {
	switch p {
	case Foreground:
		return 0
	case High:
		return 1
	case Low:
		return 3
	}
	return 2
}

// SizeUnknown is BG_SIZE_UNKNOWN: a file's size is not known yet.
const SizeUnknown int64 = -1

// File is one file of a job and its progress (BG_FILE_INFO + BG_FILE_PROGRESS).
type File struct {
	RemoteURL        string `json:"remote_url"`
	LocalName        string `json:"local_name"`
	BytesTotal       int64  `json:"bytes_total"`
	BytesTransferred int64  `json:"bytes_transferred"`
	// Transferred: every byte is staged in the temporary file.
	Transferred bool `json:"transferred"`
	// Completed: the file is visible under its local name (after Complete).
	Completed bool `json:"completed"`
	// Renamed: a Complete that then failed on another file renamed this one
	// to its local name already (a Cancel deletes it).
	Renamed      bool   `json:"renamed,omitempty"`
	TempName     string `json:"temp_name,omitempty"`
	SHA256       string `json:"sha256,omitempty"`
	ETag         string `json:"etag,omitempty"`
	LastModified string `json:"last_modified,omitempty"`
	// Ranges are the parts of the remote file the job fetches (none: all).
	Ranges []events.FileRange `json:"ranges,omitempty"`
	// ExpectedSHA256 is the digest the file must have (empty: unchecked).
	ExpectedSHA256 string `json:"expected_sha256,omitempty"`
	// ResponseHeaders are headers of the last response for the file.
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	FinalURL        string            `json:"final_url,omitempty"`
}

// Progress is BG_JOB_PROGRESS. BytesTotal is SizeUnknown until every file's
// size is known.
type Progress struct {
	BytesTotal       int64 `json:"bytes_total"`
	BytesTransferred int64 `json:"bytes_transferred"`
	FilesTotal       int   `json:"files_total"`
	FilesTransferred int   `json:"files_transferred"`
}

// Times is BG_JOB_TIMES.
type Times struct {
	Creation           time.Time  `json:"creation"`
	Modification       time.Time  `json:"modification"`
	TransferCompletion *time.Time `json:"transfer_completion,omitempty"`
}

// Job is the state of one job: what replaying its events gives.
type Job struct {
	ID          string `json:"id"`
	DisplayName string `json:"display_name"`
	Description string `json:"description,omitempty"`
	Type        string `json:"type"`
	Owner       string `json:"owner"`
	Pool        string `json:"pool"`
	// TargetAgent is the one agent the job is pinned to ("": any agent of
	// Pool).
	TargetAgent string             `json:"target_agent,omitempty"`
	State       State              `json:"state"`
	Priority    Priority           `json:"priority"`
	RetryPolicy events.RetryPolicy `json:"retry_policy"`
	Options     events.JobOptions  `json:"options"`
	Files       []File             `json:"files"`
	Progress    Progress           `json:"progress"`
	Times       Times              `json:"times"`
	Error       *events.ErrorInfo  `json:"error,omitempty"`
	ErrorCount  int                `json:"error_count"`
	// RetryAt is when a TRANSIENT_ERROR job goes back to QUEUED.
	RetryAt *time.Time `json:"retry_at,omitempty"`
	// LastProgress is the last time bytes moved or the job was (re)queued;
	// NoProgressTimeout counts from it.
	LastProgress time.Time `json:"last_progress"`
	// Resumed: the job was queued at least once (properties that may only
	// be set before the first Resume are read-only after it).
	Resumed bool `json:"resumed,omitempty"`
	// DownloadTime is the time spent CONNECTING or TRANSFERRING since the
	// last Resume, not counting the current stretch, which began at
	// ActiveSince (nil when the job is not CONNECTING or TRANSFERRING).
	// MaxDownloadTime bounds their sum.
	DownloadTime time.Duration `json:"download_time_ns,omitempty"`
	ActiveSince  *time.Time    `json:"active_since,omitempty"`
	// Agent holds the current lease (empty when none); Attempt counts leases.
	Agent   string `json:"agent,omitempty"`
	Attempt int    `json:"attempt"`
	// FilesAgent is the host that holds the job's staged files.
	FilesAgent string `json:"files_agent,omitempty"`
	// CurrentFile is the index of the file being (or next to be) transferred.
	CurrentFile int `json:"current_file"`
	// PendingComplete: Complete was called and waits for the files' host.
	PendingComplete bool `json:"pending_complete,omitempty"`
	// PendingCleanup: Cancel was called and the staged files wait for deletion.
	PendingCleanup bool `json:"pending_cleanup,omitempty"`
	// ClientCertificate is the certificate for HTTPS client authentication
	// (nil when none is set).
	ClientCertificate *CertRef `json:"client_certificate,omitempty"`
	// Version is the stream sequence of the job's last event: the expected
	// last sequence for the next append, and the fencing token.
	Version uint64 `json:"version"`
}

// Exists reports whether the job has been created.
func (j *Job) Exists() bool { return j.Version != 0 || j.ID != "" }

// NextFile returns the index of the first file not yet transferred, or -1.
func (j *Job) NextFile() int {
	for i := range j.Files {
		if !j.Files[i].Transferred {
			return i
		}
	}
	return -1
}

// Clone returns a deep copy.
func (j Job) Clone() Job {
	j.Files = append([]File(nil), j.Files...)
	if j.Error != nil {
		e := *j.Error
		j.Error = &e
	}
	if j.ClientCertificate != nil {
		c := *j.ClientCertificate
		j.ClientCertificate = &c
	}
	if j.RetryAt != nil {
		t := *j.RetryAt
		j.RetryAt = &t
	}
	if j.ActiveSince != nil {
		t := *j.ActiveSince
		j.ActiveSince = &t
	}
	j.Options = cloneOptions(j.Options)
	for i := range j.Files {
		f := &j.Files[i]
		f.Ranges = append([]events.FileRange(nil), f.Ranges...)
		if f.ResponseHeaders != nil {
			h := make(map[string]string, len(f.ResponseHeaders))
			for k, v := range f.ResponseHeaders {
				h[k] = v
			}
			f.ResponseHeaders = h
		}
	}
	if j.Times.TransferCompletion != nil {
		t := *j.Times.TransferCompletion
		j.Times.TransferCompletion = &t
	}
	return j
}

func (j *Job) String() string {
	return fmt.Sprintf("job %s %s v%d", j.ID, j.State, j.Version)
}

func cloneOptions(o events.JobOptions) events.JobOptions {
	o.IgnoreCertErrors = append([]string(nil), o.IgnoreCertErrors...)
	o.CustomHeaders = append([]string(nil), o.CustomHeaders...)
	o.WriteOnlyHeaders = append([]string(nil), o.WriteOnlyHeaders...)
	if o.Proxy != nil {
		p := *o.Proxy
		p.List = append([]string(nil), p.List...)
		p.Bypass = append([]string(nil), p.Bypass...)
		o.Proxy = &p
	}
	if o.Notify != nil {
		n := *o.Notify
		n.Flags = append([]string(nil), n.Flags...)
		o.Notify = &n
	}
	return o
}

// DownloadTimeAt is the time the job has spent CONNECTING or TRANSFERRING
// since its last Resume, as of now.
func (j *Job) DownloadTimeAt(now time.Time) time.Duration {
	d := j.DownloadTime
	if j.ActiveSince != nil && now.After(*j.ActiveSince) {
		d += now.Sub(*j.ActiveSince)
	}
	return d
}

// Defaults and limits of the BITS model.
const (
	DefaultMinimumRetryDelay = 600 * time.Second
	MinimumRetryDelayFloor   = 5 * time.Second
	DefaultNoProgressTimeout = 14 * 24 * time.Hour
	// DefaultMaxDownloadTime is BITS's default maximum download time (90 d).
	DefaultMaxDownloadTime = 90 * 24 * time.Hour
	// DefaultJobInactivityTimeout cancels a job nobody touched for 90 days.
	DefaultJobInactivityTimeout = 90 * 24 * time.Hour
	DefaultMaxRangesPerFile     = 500
	// DefaultMaxJobsPerUser bounds a user's jobs that are not final
	// (BITS: 60; ferry's default is higher). Administrators are exempt.
	DefaultMaxJobsPerUser = 1000
	MaxCustomHeaders      = 16384 // characters, all headers together
	MaxProxyList          = 32000 // characters, BG_E_PROXY_LIST_TOO_LARGE beyond
	MaxDisplayName        = 256
	MaxDescription        = 1024
	DefaultMaxFilesPerJob = 200
	MaxURLLength          = 2200 // INTERNET_MAX_URL_LENGTH-ish
	MaxLocalName          = 4096
	DefaultPool           = "default"
	TypeDownload          = "DOWNLOAD"
)
