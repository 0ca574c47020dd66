package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-dev/ferry/certvault/identity"
	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/ferry-dev/ferry/job/history"
)

// Exit codes of the CLI.
const (
	ExitOK        = 0
	ExitError     = 1 // a failure, or the job ended in ERROR
	ExitCancelled = 2 // the job was cancelled
	ExitTimeout   = 3 // --timeout ran out while waiting
)

// ExitError carries an exit code out of a CLI command.
type ExitErr struct {
	Code int
	Err  error
}

func (e *ExitErr) Error() string { return e.Err.Error() }
func (e *ExitErr) Unwrap() error { return e.Err }

// CLI renders jobs and events for people (text) or programs (JSON / NDJSON).
type CLI struct {
	Out, Err io.Writer
	JSON     bool
	// TTY enables in-place progress lines.
	TTY    bool
	Client *Client
}

// FileArgs turns "URL DEST [URL DEST...]" into file specs: DEST is made
// absolute against the working directory, and a DEST that is a directory
// (or ends in /) gets the URL's last path element appended.
func FileArgs(args []string) ([]events.FileSpec, error) {
	if len(args) == 0 || len(args)%2 != 0 {
		return nil, fmt.Errorf("expected pairs of URL DEST, got %d argument(s)", len(args))
	}
	var out []events.FileSpec
	for i := 0; i < len(args); i += 2 {
		remote, dest := args[i], args[i+1]
		if strings.HasSuffix(dest, "/") || isDir(dest) {
			u, err := url.Parse(remote)
			if err != nil || path.Base(u.Path) == "/" || path.Base(u.Path) == "." {
				return nil, fmt.Errorf("cannot name a file in %s after %s: give a file name", dest, remote)
			}
			dest = filepath.Join(dest, path.Base(u.Path))
		}
		abs, err := filepath.Abs(dest)
		if err != nil {
			return nil, err
		}
		out = append(out, events.FileSpec{RemoteURL: remote, LocalName: filepath.ToSlash(abs)})
	}
	return out, nil
}

func isDir(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// ResolveID accepts a full job ID or a unique prefix of one.
func (c *CLI) ResolveID(ctx context.Context, id string) (string, error) {
	if len(id) >= 36 {
		return id, nil
	}
	jobs, err := c.Client.List(ctx, true, "")
	if err != nil {
		return "", err
	}
	var match []string
	for _, j := range jobs {
		if strings.HasPrefix(j.ID, id) {
			match = append(match, j.ID)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return id, nil // let the coordinator say BG_E_NOT_FOUND
	}
	return "", fmt.Errorf("job id prefix %q is ambiguous: %s", id, strings.Join(match, ", "))
}

// PrintJob shows one job.
func (c *CLI) PrintJob(j job.Job) {
	if c.JSON {
		c.writeJSON(j)
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\t%s\n", j.ID)
	fmt.Fprintf(tw, "Name\t%s\n", j.DisplayName)
	fmt.Fprintf(tw, "State\t%s%s\n", j.State, pendingText(&j))
	fmt.Fprintf(tw, "Priority\t%s\n", j.Priority)
	fmt.Fprintf(tw, "Owner\t%s\n", j.Owner)
	if j.TargetAgent != "" {
		fmt.Fprintf(tw, "Runs on\tagent %s only (pool %s)\n", j.TargetAgent, j.Pool)
	} else {
		fmt.Fprintf(tw, "Runs on\tany agent of pool %s\n", j.Pool)
	}
	fmt.Fprintf(tw, "Progress\t%s (%d/%d files)\n", bytesText(j.Progress.BytesTransferred, j.Progress.BytesTotal), j.Progress.FilesTransferred, j.Progress.FilesTotal)
	fmt.Fprintf(tw, "Created\t%s\n", j.Times.Creation.Local().Format(time.RFC3339))
	fmt.Fprintf(tw, "Modified\t%s\n", j.Times.Modification.Local().Format(time.RFC3339))
	if t := j.Times.TransferCompletion; t != nil {
		fmt.Fprintf(tw, "Transferred\t%s\n", t.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "Retry policy\tminimum retry delay %ds, no-progress timeout %ds, max download time %s\n",
		j.RetryPolicy.MinimumRetryDelaySec, j.RetryPolicy.NoProgressTimeoutSec, history.SecondsText(j.RetryPolicy.MaxDownloadTimeSec))
	if opts := optionsText(j.Options); opts != "" {
		fmt.Fprintf(tw, "Options\t%s\n", opts)
	}
	if j.Agent != "" {
		fmt.Fprintf(tw, "Agent\t%s (attempt %d)\n", j.Agent, j.Attempt)
	}
	if e := j.Error; e != nil {
		fmt.Fprintf(tw, "Error\t%s (%s) in %s, file %d: %s\n", e.Code, e.HResult, e.Context, e.FileIndex, e.Description)
	}
	if j.RetryAt != nil {
		fmt.Fprintf(tw, "Next retry\t%s\n", j.RetryAt.Local().Format(time.RFC3339))
	}
	printCertLine(tw, j.ClientCertificate)
	tw.Flush()
	for i, f := range j.Files {
		mark := " "
		switch {
		case f.Completed:
			mark = "✓"
		case f.Transferred:
			mark = "•"
		}
		fmt.Fprintf(c.Out, "  %s [%d] %s -> %s  %s\n", mark, i, f.RemoteURL, f.LocalName, bytesText(f.BytesTransferred, f.BytesTotal))
	}
}

// optionsText summarizes the options that differ from the defaults. Custom
// header values are not shown (only names), as they often carry tokens.
func optionsText(o events.JobOptions) string {
	var parts []string
	if o.Dynamic {
		parts = append(parts, "dynamic content")
	}
	if o.MaxDownloadSize > 0 {
		parts = append(parts, fmt.Sprintf("max download size %d", o.MaxDownloadSize))
	}
	if len(o.IgnoreCertErrors) > 0 {
		parts = append(parts, "ignores "+strings.Join(o.IgnoreCertErrors, "+"))
	}
	if o.RedirectPolicy != "" {
		parts = append(parts, "redirects "+o.RedirectPolicy)
	}
	if o.AllowHTTPSToHTTP {
		parts = append(parts, "https→http allowed")
	}
	if o.AnonymousClientAuth {
		parts = append(parts, "anonymous client auth")
	}
	if p := o.Proxy; p != nil {
		parts = append(parts, "proxy "+p.Usage+" "+strings.Join(p.List, " "))
	}
	if len(o.CustomHeaders) > 0 {
		parts = append(parts, "headers "+strings.Join(job.HeaderNames(o.CustomHeaders), ", "))
	}
	if len(o.WriteOnlyHeaders) > 0 {
		parts = append(parts, "write-only headers "+strings.Join(o.WriteOnlyHeaders, ", "))
	}
	if n := o.Notify; n != nil {
		parts = append(parts, "notify "+strings.Join(n.Flags, "+")+" to "+n.URL)
	}
	return strings.Join(parts, "; ")
}

// PrintJobs shows a table of jobs.
func (c *CLI) PrintJobs(jobs []job.Job) {
	if c.JSON {
		c.writeJSON(coordinator.ListResponse{Jobs: jobs})
		return
	}
	if len(jobs) == 0 {
		fmt.Fprintln(c.Out, "No jobs.")
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPRIORITY\tFILES\tBYTES\tNAME")
	for _, j := range jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", j.ID, j.State, j.Priority,
			j.Progress.FilesTransferred, j.Progress.FilesTotal, bytesText(j.Progress.BytesTransferred, j.Progress.BytesTotal), j.DisplayName)
	}
	tw.Flush()
}

// PrintAction shows the result of a job action.
func (c *CLI) PrintAction(action string, r coordinator.ActionResponse) {
	if c.JSON {
		c.writeJSON(r)
		return
	}
	fmt.Fprintf(c.Out, "%s %s: %s, job is %s%s\n", action, r.Job.ID, r.Code, r.Job.State, pendingText(&r.Job))
}

// PrintBandwidth shows a pool's bandwidth limits.
func (c *CLI) PrintBandwidth(pool string, b dispatch.Bandwidth) {
	if c.JSON {
		c.writeJSON(b)
		return
	}
	rate := func(r int64) string {
		if r <= 0 {
			return "unlimited"
		}
		return fmt.Sprintf("%.3g MB/s", float64(r)/1e6)
	}
	fmt.Fprintf(c.Out, "pool %s: total %s", pool, rate(b.Total))
	for _, p := range []job.Priority{job.Foreground, job.High, job.Normal, job.Low} {
		fmt.Fprintf(c.Out, ", %s %s", p, rate(b.Class[p]))
	}
	fmt.Fprintln(c.Out)
}

func (c *CLI) writeJSON(v any) {
	enc := json.NewEncoder(c.Out)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// WatchLine is one line of `job watch -o json` (NDJSON): the event and the
// job's state and progress after it.
type WatchLine struct {
	Seq      uint64        `json:"seq"`
	Event    *events.Event `json:"event"`
	State    job.State     `json:"state"`
	Progress job.Progress  `json:"progress"`
}

// Watch follows a job's events after j.Version, replaying them into j (start
// from a zero Job to see the whole history), and returns once done reports
// true for the state, or ctx ends.
func (c *CLI) Watch(ctx context.Context, id string, j *job.Job, done func(*job.Job) bool) error {
	lastDraw := time.Time{}
	err := c.Client.Events(ctx, id, j.Version, func(ev events.Event) error {
		if err := job.Evolve(j, &ev); err != nil {
			return err
		}
		if c.JSON {
			line, err := json.Marshal(WatchLine{Seq: ev.Seq, Event: &ev, State: j.State, Progress: j.Progress})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.Out, "%s\n", line)
		} else {
			c.drawEvent(j, &ev, &lastDraw)
		}
		if done(j) {
			return ErrStop
		}
		return nil
	})
	return err
}

func (c *CLI) drawEvent(j *job.Job, ev *events.Event, lastDraw *time.Time) {
	stamp := ev.Time.Local().Format(time.TimeOnly)
	if ev.Type == events.TypeFileProgressed {
		f := j.Files[j.CurrentFile]
		line := fmt.Sprintf("%s  %-15s file %d: %s", stamp, j.State, j.CurrentFile, bytesText(f.BytesTransferred, f.BytesTotal))
		if c.TTY {
			fmt.Fprintf(c.Out, "\r\033[K%s", line)
			return
		}
		if time.Since(*lastDraw) < 5*time.Second {
			return
		}
		*lastDraw = time.Now()
		fmt.Fprintln(c.Out, line)
		return
	}
	if c.TTY {
		fmt.Fprint(c.Out, "\r\033[K")
	}
	fmt.Fprintf(c.Out, "%s  %-15s %s\n", stamp, j.State, describe(j, ev))
}

// describe says in words what an event did.
func describe(j *job.Job, ev *events.Event) string {
	p, err := ev.Payload()
	if err != nil {
		return ev.Type
	}
	switch e := p.(type) {
	case *events.JobCreated:
		return fmt.Sprintf("created %q by %s (priority %s)", e.DisplayName, e.Owner, e.Priority)
	case *events.FilesAdded:
		return fmt.Sprintf("%d file(s) added", len(e.Files))
	case *events.JobQueued:
		return "queued (" + e.Reason + ")"
	case *events.JobLeased:
		return fmt.Sprintf("leased by %s (attempt %d)", e.Agent, e.Attempt)
	case *events.JobConnecting:
		return fmt.Sprintf("connecting for file %d: %s", e.FileIndex, j.Files[e.FileIndex].RemoteURL)
	case *events.JobTransferring:
		s := fmt.Sprintf("file %d: %s", e.FileIndex, history.SizeText(e.BytesTotal))
		if e.Offset > 0 {
			s += fmt.Sprintf(", resuming at %s", history.SizeText(e.Offset))
		}
		if e.Restarted != "" {
			s += ", restarted from zero: " + e.Restarted
		}
		return s
	case *events.FileTransferred:
		return fmt.Sprintf("file %d staged: %s, sha256 %s", e.FileIndex, history.SizeText(e.Bytes), e.SHA256)
	case *events.JobTransferred:
		return "all files transferred"
	case *events.JobTransientError:
		return fmt.Sprintf("%s (%s): %s; retry at %s", e.Error.Code, e.Error.HResult, e.Error.Description, e.RetryAt.Local().Format(time.TimeOnly))
	case *events.JobFailed:
		return fmt.Sprintf("%s (%s) in %s: %s", e.Error.Code, e.Error.HResult, e.Error.Context, e.Error.Description)
	case *events.JobCompleteRequested:
		return "complete requested"
	case *events.JobAcknowledged:
		if e.Partial {
			return fmt.Sprintf("completed: %d file(s) renamed (BG_S_PARTIAL_COMPLETE)", len(e.Files))
		}
		return fmt.Sprintf("completed: %d file(s) renamed", len(e.Files))
	case *events.JobCompleteFailed:
		return fmt.Sprintf("complete failed: %s: %s", e.Error.Code, e.Error.Description)
	case *events.JobCancelled:
		return "cancelled"
	case *events.JobFilesDeleted:
		return "temporary files deleted"
	case *events.JobSuspended:
		return "suspended"
	case *events.JobModified:
		return "properties changed"
	}
	if s, ok := describeCert(p); ok {
		return s
	}
	return ev.Type
}

func pendingText(j *job.Job) string {
	switch {
	case j.PendingComplete:
		return " (completing on agent " + j.FilesAgent + ", which holds the files)"
	case j.PendingCleanup:
		return " (deleting files on agent " + j.FilesAgent + ")"
	}
	return ""
}

func bytesText(done, total int64) string {
	if total < 0 {
		return history.SizeText(done) + " / ?"
	}
	pct := 100.0
	if total > 0 {
		pct = float64(done) * 100 / float64(total)
	}
	return fmt.Sprintf("%s / %s (%.0f%%)", history.SizeText(done), history.SizeText(total), pct)
}

// TransferOptions tune `ferry transfer`.
type TransferOptions struct {
	DisplayName string
	Priority    string
	// Pool and Agent say where the job runs: an agent of Pool (default
	// "default"), or Agent alone.
	Pool, Agent string
	Timeout     time.Duration
	// Cert, if set, is the job's client certificate, set before it resumes.
	Cert CertSpec
	// Options and MaxDownloadTimeS are passed to the job's creation.
	Options          *job.OptionsPatch
	MaxDownloadTimeS *int64
}

// Transfer is `ferry transfer`: create and resume a job, watch it, complete
// it when transferred, and return the exit code.
func (c *CLI) Transfer(ctx context.Context, files []events.FileSpec, o TransferOptions) (job.Job, error) {
	if o.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Timeout)
		defer cancel()
	}
	name := o.DisplayName
	if name == "" {
		name = "transfer of " + path.Base(files[0].LocalName)
		if len(files) > 1 {
			name += fmt.Sprintf(" and %d more", len(files)-1)
		}
	}
	created, err := c.CreateWithCert(ctx, coordinator.CreateRequest{DisplayName: name, Priority: o.Priority, Pool: o.Pool, Agent: o.Agent, Files: files, Resume: true,
		Options: o.Options, MaxDownloadTimeS: o.MaxDownloadTimeS}, o.Cert)
	if err != nil {
		return created, err
	}
	if !c.JSON {
		fmt.Fprintf(c.Err, "job %s\n", created.ID)
	}
	var j job.Job // replayed from the job's first event
	completing := false
	for {
		err = c.Watch(ctx, created.ID, &j, func(j *job.Job) bool {
			switch j.State {
			case job.Transferred:
				return !j.PendingComplete || !completing
			case job.Errored, job.Acknowledged, job.Cancelled:
				return true
			}
			return false
		})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return j, &ExitErr{ExitTimeout, fmt.Errorf("timed out waiting for job %s (it goes on; see `ferry job show %s`)", created.ID, created.ID)}
			}
			return j, err
		}
		switch j.State {
		case job.Transferred:
			if completing {
				// Complete failed on the agent: the job stays TRANSFERRED.
				return j, &ExitErr{ExitError, fmt.Errorf("complete failed: %s", errorText(j.Error))}
			}
			if _, err := c.Client.Action(ctx, j.ID, "complete"); err != nil {
				return j, err
			}
			completing = true
		case job.Acknowledged:
			return j, nil
		case job.Cancelled:
			return j, &ExitErr{ExitCancelled, fmt.Errorf("job %s was cancelled", j.ID)}
		case job.Errored:
			return j, &ExitErr{ExitError, fmt.Errorf("job %s failed: %s", j.ID, errorText(j.Error))}
		}
	}
}

func errorText(e *events.ErrorInfo) string {
	if e == nil {
		return "unknown error"
	}
	return fmt.Sprintf("%s (%s): %s", e.Code, e.HResult, e.Description)
}

// CommonRoot returns the deepest directory that contains every local name:
// the root of an in-process agent.
func CommonRoot(files []events.FileSpec) string {
	root := path.Dir(files[0].LocalName)
	for _, f := range files[1:] {
		for !strings.HasPrefix(f.LocalName, strings.TrimSuffix(root, "/")+"/") {
			root = path.Dir(root)
		}
	}
	return filepath.FromSlash(root)
}

// PrintSession shows what a server received from this client.
func (c *CLI) PrintSession(info identity.ClientCertInfo) {
	if c.JSON {
		c.writeJSON(info)
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Principal\t%s\n", orDash(info.Principal))
	fmt.Fprintf(tw, "Role\t%s\n", orDash(string(info.Role)))
	fmt.Fprintf(tw, "Verified\t%t (%s)\n", info.Verified, strings.Join(info.Flags, ", "))
	fmt.Fprintf(tw, "Subject\t%s\n", info.Subject)
	fmt.Fprintf(tw, "Issuer\t%s\n", info.Issuer)
	fmt.Fprintf(tw, "Valid\t%s to %s\n", info.NotBefore.Format(time.RFC3339), info.NotAfter.Format(time.RFC3339))
	fmt.Fprintf(tw, "SHA-1\t%s\n", info.SHA1)
	fmt.Fprintf(tw, "SHA-256\t%s\n", info.SHA256)
	if info.DeniedByMapper {
		fmt.Fprintf(tw, "Denied by mapper\ttrue\n")
	}
	if info.ChannelBinding != "" {
		fmt.Fprintf(tw, "Channel binding\t%s\n", info.ChannelBinding)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// PrintAgents shows the agent registry: one line per agent when the caller
// may see them (administrators), else one line per pool.
func (c *CLI) PrintAgents(r coordinator.AgentsResponse) {
	if c.JSON {
		c.writeJSON(r)
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	if len(r.Agents) > 0 {
		fmt.Fprintln(tw, "ID\tPOOL\tSLOTS\tRUNNING\tFREE DISK\tLAST SEEN\tSTATE\tVERSION")
		now := time.Now()
		for _, a := range r.Agents {
			free := "?"
			if a.FreeBytes >= 0 {
				free = history.SizeText(a.FreeBytes)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s ago\t%s\t%s\n", a.ID, a.Pool, a.Slots, a.Running, free,
				max(now.Sub(a.LastSeen), 0).Round(time.Second), a.State, a.Version)
		}
		return
	}
	if len(r.Pools) == 0 {
		fmt.Fprintln(tw, "No agents.")
		return
	}
	fmt.Fprintln(tw, "POOL\tAGENTS\tSLOTS\tRUNNING")
	for _, p := range r.Pools {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\n", p.Pool, p.Agents, p.Slots, p.Running)
	}
}
