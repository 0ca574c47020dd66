package events

import (
	"encoding/json"
	"errors"
	"time"
)

// Job lifecycle event types. The names and their fields are a public API
// (docs/events.md); never change their meaning, add a version instead.
const (
	TypeJobCreated           = "JobCreated"
	TypeFilesAdded           = "FilesAdded"
	TypeJobModified          = "JobModified"
	TypeJobQueued            = "JobQueued"
	TypeJobSuspended         = "JobSuspended"
	TypeJobLeased            = "JobLeased"
	TypeJobConnecting        = "JobConnecting"
	TypeJobTransferring      = "JobTransferring"
	TypeFileProgressed       = "FileProgressed"
	TypeFileTransferred      = "FileTransferred"
	TypeJobTransferred       = "JobTransferred"
	TypeJobTransientError    = "JobTransientError"
	TypeJobFailed            = "JobFailed"
	TypeJobCompleteRequested = "JobCompleteRequested"
	TypeJobAcknowledged      = "JobAcknowledged"
	TypeJobCompleteFailed    = "JobCompleteFailed"
	TypeJobCancelled         = "JobCancelled"
	TypeJobFilesDeleted      = "JobFilesDeleted"

	TypeClientCertificateSet     = "ClientCertificateSet"
	TypeClientCertificateRemoved = "ClientCertificateRemoved"
	TypeJobOwnerChanged          = "JobOwnerChanged"
)

// FileSpec is one file of a job as the user asked for it.
type FileSpec struct {
	RemoteURL string `json:"remote_url"`
	LocalName string `json:"local_name"`
	// Ranges (AddFileWithRanges) are the parts of the remote file to fetch,
	// concatenated in this order into the local file. None: the whole file.
	Ranges []FileRange `json:"ranges,omitempty"`
	// SHA256 is the expected digest of the local file (64 lower-case hex
	// digits); a mismatch fails the job with BG_E_VALIDATION_FAILED.
	SHA256 string `json:"sha256,omitempty"`
}

// FileRange is BG_FILE_RANGE: Length -1 is BG_LENGTH_TO_EOF.
type FileRange struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// RetryPolicy is the BITS retry policy of a job, in seconds.
type RetryPolicy struct {
	MinimumRetryDelaySec int64 `json:"minimum_retry_delay_s"`
	NoProgressTimeoutSec int64 `json:"no_progress_timeout_s"`
	// MaxDownloadTimeSec bounds the time the job spends CONNECTING or
	// TRANSFERRING (SetMaximumDownloadTime); 0 means no limit.
	MaxDownloadTimeSec int64 `json:"max_download_time_s,omitempty"`
}

// JobOptions are the job's HTTP options and BITS job properties
// (IBackgroundCopyJobHttpOptions, BITS_JOB_PROPERTY_ID_*). They never hold
// secrets: write-only custom headers live in certvault and appear here by
// name only.
type JobOptions struct {
	// Dynamic is DYNAMIC_CONTENT: no Range or size needed, an interruption
	// restarts the file from zero.
	Dynamic bool `json:"dynamic_content,omitempty"`
	// MaxDownloadSize is MAX_DOWNLOAD_SIZE in bytes (0: no limit).
	MaxDownloadSize int64 `json:"max_download_size,omitempty"`
	// IgnoreCertErrors are the BG_SSL_IGNORE_* flags the owner opted into:
	// "CERT_CN_INVALID", "CERT_DATE_INVALID", "UNKNOWN_CA", "CERT_WRONG_USAGE".
	IgnoreCertErrors []string `json:"ignore_cert_errors,omitempty"`
	// RedirectPolicy is BG_HTTP_REDIRECT_POLICY_*: "ALLOW_SILENT" (default,
	// empty), "ALLOW_REPORT" or "DISALLOW".
	RedirectPolicy string `json:"redirect_policy,omitempty"`
	// AllowHTTPSToHTTP is BG_HTTP_REDIRECT_POLICY_ALLOW_HTTPS_TO_HTTP.
	AllowHTTPSToHTTP bool `json:"allow_https_to_http,omitempty"`
	// AnonymousClientAuth lets the job answer an origin's optional request
	// for a client certificate with none, instead of failing with
	// ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED as BITS does.
	AnonymousClientAuth bool `json:"anonymous_client_auth,omitempty"`
	// Proxy is SetProxySettings; nil is PRECONFIG.
	Proxy *ProxySettings `json:"proxy,omitempty"`
	// CustomHeaders are sent on every request (SetCustomHeaders), one
	// "Name: value" per element.
	CustomHeaders []string `json:"custom_headers,omitempty"`
	// WriteOnlyHeaders names the custom headers whose values were made
	// write-only (MakeCustomHeadersWriteOnly): certvault keeps the values.
	WriteOnlyHeaders []string `json:"write_only_headers,omitempty"`
	// Notify is SetNotifyFlags plus the HTTPS webhook that receives them.
	Notify *NotifySettings `json:"notify,omitempty"`
}

// ProxySettings is BG_JOB_PROXY_USAGE with its lists.
type ProxySettings struct {
	Usage  string   `json:"usage"` // PRECONFIG, NO_PROXY, OVERRIDE, AUTODETECT
	List   []string `json:"list,omitempty"`
	Bypass []string `json:"bypass,omitempty"`
}

// NotifySettings is the job's notification flags (BG_NOTIFY_* names) and the
// HTTPS URL they are delivered to.
type NotifySettings struct {
	Flags []string `json:"flags"`
	URL   string   `json:"url"`
}

// ErrorInfo is the BITS error of a job (IBackgroundCopyError): the context, the
// code as symbol and HRESULT, a description, and the file it concerns (-1 when
// it concerns the job).
type ErrorInfo struct {
	Context     string `json:"context"`
	Code        string `json:"code"`
	HResult     string `json:"hresult"`
	Description string `json:"description"`
	FileIndex   int    `json:"file_index"`
}

// JobCreated starts a job. It is always the first event of a job; the job
// starts SUSPENDED.
type JobCreated struct {
	JobID       string `json:"job_id"`
	DisplayName string `json:"display_name"`
	Description string `json:"description,omitempty"`
	JobType     string `json:"job_type"` // DOWNLOAD
	Owner       string `json:"owner"`
	Priority    string `json:"priority"`
	Pool        string `json:"pool"`
	// Agent, when set, pins the job to that one agent: its transfers are
	// dispatched to ferry.cmd.agent.<agent>.<job> instead of the pool, and
	// the job waits for that agent while it is offline. (Added to version
	// 1 as an optional field: absent in older events means the pool.)
	Agent       string      `json:"agent,omitempty"`
	RetryPolicy RetryPolicy `json:"retry_policy"`
	Options     JobOptions  `json:"options"`
}

// FilesAdded appends files to the job, in order, after the files it has.
type FilesAdded struct {
	Files []FileSpec `json:"files"`
}

// JobModified changes job properties (SetPriority, SetDisplayName, ...). Only
// the fields present changed.
type JobModified struct {
	DisplayName *string      `json:"display_name,omitempty"`
	Description *string      `json:"description,omitempty"`
	Priority    *string      `json:"priority,omitempty"`
	RetryPolicy *RetryPolicy `json:"retry_policy,omitempty"`
	// Options, when present, are all of the job's options after the change.
	Options *JobOptions `json:"options,omitempty"`
	// Reason is empty for an owner's change, "ownership-changed" when
	// TakeOwnership removed the previous owner's custom headers.
	Reason string `json:"reason,omitempty"`
}

// JobQueued moves the job to QUEUED: a user resumed it, a retry delay
// elapsed, or the agent yielded it to higher-priority work. Reason is
// "resume", "retry", "requeue" or "preempted".
type JobQueued struct {
	Reason string `json:"reason"`
}

// JobSuspended moves the job to SUSPENDED. Any lease ends.
type JobSuspended struct{}

// JobLeased records that an agent claimed the job. It is the agent's first
// write for an attempt and fences every earlier holder.
type JobLeased struct {
	Agent   string `json:"agent"`
	Attempt int    `json:"attempt"`
	// DispatchSeq is the job's subject sequence the dispatch command carried.
	DispatchSeq uint64 `json:"dispatch_seq"`
	// PreviousAgent is set on a takeover: the agent that held the job
	// before (it stopped heartbeating — died, paused or cut off — or
	// handed the job back), so its files are gone from this attempt.
	PreviousAgent string `json:"previous_agent,omitempty"`
	// Deliveries is the dispatch's delivery count as JetStream reported
	// it (1: first delivery; more: redelivered after AckWait or a hand
	// back); 0 when unknown.
	Deliveries int `json:"deliveries,omitempty"`
}

// JobConnecting: the lease holder is connecting to the origin of a file.
type JobConnecting struct {
	Agent     string `json:"agent"`
	FileIndex int    `json:"file_index"`
}

// JobTransferring: bytes of a file are flowing. BytesTotal is -1 when the
// size is unknown. Offset is where this attempt started in the file (non-zero
// on a resume).
type JobTransferring struct {
	Agent      string `json:"agent"`
	FileIndex  int    `json:"file_index"`
	BytesTotal int64  `json:"bytes_total"`
	Offset     int64  `json:"offset"`
	// Restarted is set when the origin forced a download from zero even though
	// bytes were already staged (no range support or a changed validator).
	Restarted string `json:"restarted,omitempty"`
}

// FileProgressed is a progress checkpoint of one file: the bytes durably
// staged so far. Checkpoints are rate-limited (per time and per bytes).
type FileProgressed struct {
	FileIndex        int   `json:"file_index"`
	BytesTransferred int64 `json:"bytes_transferred"`
	BytesTotal       int64 `json:"bytes_total"`
}

// FileTransferred: a file is fully staged (fsynced) in its temporary file.
type FileTransferred struct {
	FileIndex int    `json:"file_index"`
	Bytes     int64  `json:"bytes"`
	SHA256    string `json:"sha256"`
	TempName  string `json:"temp_name"`
	ETag      string `json:"etag,omitempty"`
	// LastModified is the origin's Last-Modified header, verbatim.
	LastModified string `json:"last_modified,omitempty"`
	// ResponseHeaders are headers of the last response for the file
	// (BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS): ETag, Last-Modified,
	// Content-Length, Content-Type, Content-Range, Content-Encoding.
	ResponseHeaders map[string]string `json:"response_headers,omitempty"`
	// FinalURL is where redirects led, when the job's redirect policy is
	// ALLOW_REPORT (query removed).
	FinalURL string `json:"final_url,omitempty"`
}

// JobTransferred: every file is staged; the job waits for Complete.
type JobTransferred struct{}

// JobTransientError: a recoverable failure; the job retries at RetryAt unless
// NoProgressTimeout runs out first.
//
// Version 2 (current) added Attempt and RetryAfterSec, so that the event
// alone says which lease attempt failed and how long the job waits, without
// replaying the job's earlier events. Version 1 ({error, retry_at}) is
// upcast with both zero, which means "not recorded": attempts count from 1
// and a retry delay is at least 5 s, so zero is never a recorded value.
type JobTransientError struct {
	Error   ErrorInfo `json:"error"`
	RetryAt time.Time `json:"retry_at"`
	// Attempt is the lease attempt that failed (JobLeased.Attempt).
	Attempt int `json:"attempt"`
	// RetryAfterSec is the delay until RetryAt in whole seconds, rounded
	// up: the job's minimum retry delay, or the origin's Retry-After when
	// that is longer.
	RetryAfterSec int64 `json:"retry_after_s"`
}

// upcastJobTransientErrorV1 turns JobTransientError v1 data into v2: the
// fields of v1 verbatim, attempt and retry_after_s 0 (not recorded).
func upcastJobTransientErrorV1(data json.RawMessage) (json.RawMessage, error) {
	var v1 struct {
		Error   json.RawMessage `json:"error"`
		RetryAt json.RawMessage `json:"retry_at"`
	}
	if err := json.Unmarshal(data, &v1); err != nil {
		return nil, err
	}
	if v1.Error == nil || v1.RetryAt == nil {
		return nil, errors.New("version 1 data without error or retry_at")
	}
	v2 := struct {
		Error         json.RawMessage `json:"error"`
		RetryAt       json.RawMessage `json:"retry_at"`
		Attempt       int             `json:"attempt"`
		RetryAfterSec int64           `json:"retry_after_s"`
	}{Error: v1.Error, RetryAt: v1.RetryAt}
	return json.Marshal(v2)
}

// JobFailed moves the job to ERROR with a fatal error.
type JobFailed struct {
	Error ErrorInfo `json:"error"`
}

// Reasons of JobCancelled.
const (
	CancelledByUser     = ""
	CancelledInactivity = "inactivity" // JobInactivityTimeout
)

// JobCompleteRequested: the owner called Complete; the agent holding the files
// renames the finished ones to their final names.
type JobCompleteRequested struct {
	// Agent is the host that holds the staged files ("" if none has any).
	Agent string `json:"agent,omitempty"`
}

// JobAcknowledged: Complete finished. Files lists the indexes made visible;
// Partial is true when some files were not transferred
// (BG_S_PARTIAL_COMPLETE).
type JobAcknowledged struct {
	Files   []int `json:"files"`
	Partial bool  `json:"partial"`
}

// JobCompleteFailed: renaming failed; the job stays TRANSFERRED. Renamed
// lists the files that were renamed before the failure: they are visible
// under their names, and a Cancel deletes them with the temporary files.
type JobCompleteFailed struct {
	Error   ErrorInfo `json:"error"`
	Renamed []int     `json:"renamed,omitempty"`
}

// JobCancelled: the job is CANCELLED (final). Agent names the host whose
// staged files must be deleted ("" if none).
type JobCancelled struct {
	Agent string `json:"agent,omitempty"`
	// Reason is empty when a user cancelled the job, "inactivity" when
	// JobInactivityTimeout did.
	Reason string `json:"reason,omitempty"`
}

// JobFilesDeleted: the agent deleted the job's temporary files after Cancel.
// Undeleted lists files it could not delete (BG_S_UNABLE_TO_DELETE_FILES).
type JobFilesDeleted struct {
	Agent     string   `json:"agent"`
	Undeleted []string `json:"undeleted,omitempty"`
}

// ClientCertificateSet names the job's HTTPS client certificate
// (SetClientCertificateByID / ByName): the store it is in and its SHA-1
// thumbprint, resolved in certvault when it was set. Never key material.
type ClientCertificateSet struct {
	Location string `json:"location"` // BG_CERT_STORE_LOCATION name, "CURRENT_USER"
	Store    string `json:"store"`    // canonical store name, "MY"
	SHA1     string `json:"sha1"`     // 40 lower-case hex digits
	Subject  string `json:"subject"`  // the certificate's subject (RFC 4514), for people
	// By says how the owner named it: "id" (thumbprint) or "name" (subject).
	By string `json:"by"`
}

// Reasons of ClientCertificateRemoved.
const (
	CertRemovedByOwner        = "removed"
	CertRemovedOwnershipMoved = "ownership-changed"
)

// ClientCertificateRemoved: the job has no client certificate any more.
// Reason is "removed" (RemoveClientCertificate) or "ownership-changed" (the
// job changed owner, and a certificate never outlives its owner's job).
type ClientCertificateRemoved struct {
	Reason string `json:"reason"`
}

// JobOwnerChanged: an administrator took ownership of the job
// (TakeOwnership).
type JobOwnerChanged struct {
	From string `json:"from"`
	To   string `json:"to"`
}

func (*JobCreated) EventType() string           { return TypeJobCreated }
func (*FilesAdded) EventType() string           { return TypeFilesAdded }
func (*JobModified) EventType() string          { return TypeJobModified }
func (*JobQueued) EventType() string            { return TypeJobQueued }
func (*JobSuspended) EventType() string         { return TypeJobSuspended }
func (*JobLeased) EventType() string            { return TypeJobLeased }
func (*JobConnecting) EventType() string        { return TypeJobConnecting }
func (*JobTransferring) EventType() string      { return TypeJobTransferring }
func (*FileProgressed) EventType() string       { return TypeFileProgressed }
func (*FileTransferred) EventType() string      { return TypeFileTransferred }
func (*JobTransferred) EventType() string       { return TypeJobTransferred }
func (*JobTransientError) EventType() string    { return TypeJobTransientError }
func (*JobFailed) EventType() string            { return TypeJobFailed }
func (*JobCompleteRequested) EventType() string { return TypeJobCompleteRequested }
func (*JobAcknowledged) EventType() string      { return TypeJobAcknowledged }
func (*JobCompleteFailed) EventType() string    { return TypeJobCompleteFailed }
func (*JobCancelled) EventType() string         { return TypeJobCancelled }
func (*JobFilesDeleted) EventType() string      { return TypeJobFilesDeleted }

func (*ClientCertificateSet) EventType() string     { return TypeClientCertificateSet }
func (*ClientCertificateRemoved) EventType() string { return TypeClientCertificateRemoved }
func (*JobOwnerChanged) EventType() string          { return TypeJobOwnerChanged }

func (*ClientCertificateSet) EventVersion() int     { return 1 }
func (*ClientCertificateRemoved) EventVersion() int { return 1 }
func (*JobOwnerChanged) EventVersion() int          { return 1 }

func (*JobCreated) EventVersion() int           { return 1 }
func (*FilesAdded) EventVersion() int           { return 1 }
func (*JobModified) EventVersion() int          { return 1 }
func (*JobQueued) EventVersion() int            { return 1 }
func (*JobSuspended) EventVersion() int         { return 1 }
func (*JobLeased) EventVersion() int            { return 1 }
func (*JobConnecting) EventVersion() int        { return 1 }
func (*JobTransferring) EventVersion() int      { return 1 }
func (*FileProgressed) EventVersion() int       { return 1 }
func (*FileTransferred) EventVersion() int      { return 1 }
func (*JobTransferred) EventVersion() int       { return 1 }
func (*JobTransientError) EventVersion() int    { return 2 }
func (*JobFailed) EventVersion() int            { return 1 }
func (*JobCompleteRequested) EventVersion() int { return 1 }
func (*JobAcknowledged) EventVersion() int      { return 1 }
func (*JobCompleteFailed) EventVersion() int    { return 1 }
func (*JobCancelled) EventVersion() int         { return 1 }
func (*JobFilesDeleted) EventVersion() int      { return 1 }

func init() {
	register(func() Payload { return new(JobCreated) })
	register(func() Payload { return new(FilesAdded) })
	register(func() Payload { return new(JobModified) })
	register(func() Payload { return new(JobQueued) })
	register(func() Payload { return new(JobSuspended) })
	register(func() Payload { return new(JobLeased) })
	register(func() Payload { return new(JobConnecting) })
	register(func() Payload { return new(JobTransferring) })
	register(func() Payload { return new(FileProgressed) })
	register(func() Payload { return new(FileTransferred) })
	register(func() Payload { return new(JobTransferred) })
	register(func() Payload { return new(JobTransientError) })
	registerUpcaster(TypeJobTransientError, 1, upcastJobTransientErrorV1)
	register(func() Payload { return new(JobFailed) })
	register(func() Payload { return new(JobCompleteRequested) })
	register(func() Payload { return new(JobAcknowledged) })
	register(func() Payload { return new(JobCompleteFailed) })
	register(func() Payload { return new(JobCancelled) })
	register(func() Payload { return new(JobFilesDeleted) })
	register(func() Payload { return new(ClientCertificateSet) })
	register(func() Payload { return new(ClientCertificateRemoved) })
	register(func() Payload { return new(JobOwnerChanged) })
}
