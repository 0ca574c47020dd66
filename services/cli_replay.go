package services

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/job/history"
)

// ParseTime reads a point in time given on the command line: RFC 3339
// (2026-11-02T09:30:00Z, fractions and offsets allowed), or the same
// without a zone, or a date, in local time.
func ParseTime(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02T15:04:05.999999999", "2006-01-02 15:04:05.999999999", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use RFC 3339 such as 2026-11-02T09:30:00Z (or local time 2026-11-02 09:30:00)", s)
}

// ReplayJob shows job id's state at p and its timeline: from the
// coordinator, or with file set, from an export file with no server at all
// (id may then be a unique prefix of a job in the file).
func (c *CLI) ReplayJob(ctx context.Context, id string, p history.Point, file string) error {
	if err := p.Validate(); err != nil {
		return err
	}
	var h coordinator.HistoryResponse
	var err error
	if file != "" {
		h, err = ReplayJobFile(file, id, p)
	} else {
		if id, err = c.ResolveID(ctx, id); err != nil {
			return err
		}
		h, err = c.Client.History(ctx, id, p)
	}
	if err != nil {
		return err
	}
	c.PrintHistory(h)
	return nil
}

// PrintHistory shows a job as of a point of its history: the state then
// (as `job show` shows it) and the timeline up to there, one line per
// event.
func (c *CLI) PrintHistory(h coordinator.HistoryResponse) {
	if c.JSON {
		c.writeJSON(h)
		return
	}
	a := h.AsOf
	when := "now"
	if !a.Latest() {
		when = "as of"
		if a.RequestedSeq != 0 {
			when += fmt.Sprintf(" sequence %d", a.RequestedSeq)
		}
		if a.RequestedTime != nil {
			when += " " + timeText(*a.RequestedTime)
		}
	}
	fmt.Fprintf(c.Out, "Job %s %s: event %d of %d (sequence %d, %s)\n\n", h.Job.ID, when, a.Events, a.Total, a.Seq, timeText(a.Time))
	c.PrintJob(h.Job)
	fmt.Fprintln(c.Out)
	c.PrintTimeline(h.Timeline)
}

// PrintTimeline shows timeline entries as a table.
func (c *CLI) PrintTimeline(entries []history.Entry) {
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tSTATE\tBY\tAGENT\tWHAT")
	for _, e := range entries {
		state := string(e.To)
		if e.From != e.To {
			state = string(e.From) + " -> " + string(e.To)
			if e.From == "" {
				state = string(e.To)
			}
		}
		agent := e.Agent
		if agent != "" && e.Attempt > 0 {
			agent += fmt.Sprintf(" #%d", e.Attempt)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, timeText(e.Time), state, orDash(principalText(e.Actor)), orDash(agent), e.Summary)
	}
	tw.Flush()
}

// timeText is a time for people that --at reads back.
func timeText(t time.Time) string { return t.Local().Format("2006-01-02T15:04:05.000Z07:00") }

// Export writes the event log to w and says on c.Err how many events.
func (c *CLI) Export(ctx context.Context, w io.Writer, o ExportOptions) error {
	n, err := c.Client.Export(ctx, w, o)
	if err != nil {
		return err
	}
	if !c.JSON {
		fmt.Fprintf(c.Err, "exported %d events\n", n)
	}
	return nil
}

// Import sends the export file at path ("-": standard input) and shows
// what was imported.
func (c *CLI) Import(ctx context.Context, path string) error {
	f, err := OpenExport(path)
	if err != nil {
		return err
	}
	defer f.Close()
	res, err := c.Client.Import(ctx, f)
	if err != nil {
		return err
	}
	if c.JSON {
		c.writeJSON(res)
		return nil
	}
	fmt.Fprintf(c.Out, "imported %d events, skipped %d already there (%d lines, %d subjects)\n", res.Imported, res.Skipped, res.Lines, res.Subjects)
	return nil
}
