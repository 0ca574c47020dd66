package services

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
)

// ExitMismatch is the exit status of `ferry replay verify` when a read model
// disagrees with a replay of the log (1 means it could not verify).
const ExitMismatch = 4

// VerifyProjections runs `ferry replay verify`: progress on stderr (text
// output only), the verdict on stdout, and ExitMismatch when a projection
// disagrees with the log.
func (c *CLI) VerifyProjections(ctx context.Context, projection string) error {
	rep, err := c.Client.VerifyProjections(ctx, coordinator.VerifyRequest{Projection: projection}, c.progressPrinter())
	if err != nil {
		return err
	}
	if c.JSON {
		c.writeJSON(rep)
	} else {
		for _, p := range rep.Projections {
			c.printVerify(p)
		}
	}
	if rep.Agree {
		return nil
	}
	var bad []string
	n := 0
	for _, p := range rep.Projections {
		if !p.Agree {
			bad = append(bad, p.Projection)
			n += len(p.Mismatches)
		}
	}
	return &ExitErr{Code: ExitMismatch, Err: fmt.Errorf(
		"projection %s disagrees with a replay of the log (%s); `ferry replay rebuild --projection %s` rebuilds it from the log",
		strings.Join(bad, ", "), plural(n, "mismatching entry", "mismatching entries"), bad[0])}
}

func (c *CLI) printVerify(p coordinator.ProjectionVerify) {
	fmt.Fprintf(c.Out, "%s (%s, generation %d, bucket %s): %d entries compared at log sequence %d",
		p.Projection, p.Version, p.Generation, p.Bucket, p.Checked, p.Position)
	if p.Rechecked > 0 {
		fmt.Fprintf(c.Out, ", %d checked again job by job", p.Rechecked)
	}
	if p.Agree {
		fmt.Fprintf(c.Out, ": agree (%s)\n", durationText(p.DurationMS))
		return
	}
	fmt.Fprintf(c.Out, ": %s (%s)\n", strings.ToUpper(plural(len(p.Mismatches), "mismatch", "mismatches")), durationText(p.DurationMS))
	version := func(v uint64) string {
		if v == 0 {
			return "-"
		}
		return fmt.Sprintf("v%d", v)
	}
	for _, m := range p.Mismatches {
		fmt.Fprintf(c.Out, "  %s  %-11s live %s, replayed %s", m.Job, m.Kind, version(m.LiveVersion), version(m.ReplayedVersion))
		if m.Detail != "" {
			fmt.Fprintf(c.Out, ": %s", m.Detail)
		}
		fmt.Fprintln(c.Out)
		for _, d := range m.Differences {
			fmt.Fprintf(c.Out, "      %s\n", d)
		}
	}
}

// RebuildProjection runs `ferry replay rebuild`. It fails (exit 1) when the
// switch was made but the old generation had to be kept.
func (c *CLI) RebuildProjection(ctx context.Context, projection string, switchTimeout time.Duration) error {
	req := coordinator.RebuildRequest{SwitchTimeoutS: int64(switchTimeout / time.Second)}
	rep, err := c.Client.RebuildProjection(ctx, projection, req, c.progressPrinter())
	if err != nil {
		return err
	}
	if c.JSON {
		c.writeJSON(rep)
	} else {
		for _, b := range rep.Removed {
			fmt.Fprintf(c.Out, "deleted leftover bucket %s\n", b)
		}
		fmt.Fprintf(c.Out, "%s: generation %d (bucket %s) built from the log up to sequence %d (%d jobs) and now current (%s)\n",
			rep.Projection, rep.Generation, rep.Bucket, rep.Position, rep.Jobs, durationText(rep.DurationMS))
		if rep.OldBucketDeleted {
			fmt.Fprintf(c.Out, "every coordinator switched; generation %d (bucket %s) deleted\n", rep.FromGeneration, rep.FromBucket)
		}
	}
	if !rep.OldBucketDeleted {
		return fmt.Errorf("switched to %s, but kept %s: coordinator(s) %s still read it when the switch timeout ran out; the next rebuild deletes it once unused",
			rep.Bucket, rep.FromBucket, strings.Join(rep.StillReading, ", "))
	}
	return nil
}

// progressPrinter writes progress reports to stderr, one line each, in
// text output; JSON output gets the result only.
func (c *CLI) progressPrinter() func(coordinator.ProjectionProgress) {
	if c.JSON || c.Err == nil {
		return nil
	}
	return func(p coordinator.ProjectionProgress) {
		fmt.Fprintf(c.Err, "%s: %s\n", p.Projection, progressText(p))
	}
}

func progressText(p coordinator.ProjectionProgress) string {
	if p.Message != "" {
		return p.Message
	}
	pos := func() string {
		if p.Target == 0 {
			return fmt.Sprintf("sequence %d", p.Applied)
		}
		return fmt.Sprintf("%d/%d (%d%%)", p.Applied, p.Target, p.Applied*100/p.Target)
	}
	switch p.Phase {
	case "replay":
		s := "replaying the log: " + pos()
		if p.Jobs > 0 {
			s += fmt.Sprintf(", %d jobs", p.Jobs)
		}
		return s
	case "catch-up":
		return "catching up with the end of the log: " + pos()
	case "live":
		return "waiting for the live projector: " + pos()
	case "compare":
		if p.Jobs == 0 {
			return fmt.Sprintf("comparing with the live model at sequence %d", p.Target)
		}
		return fmt.Sprintf("comparing with the live model at sequence %d: %d entries", p.Target, p.Jobs)
	}
	return p.Phase
}

func durationText(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(time.Millisecond).String()
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
