package main

import (
	"errors"
	"os"

	"github.com/ferry-dev/ferry/job/history"
	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// replayCmd is `ferry replay`: job (this file), verify and rebuild (replayproj.go).
func replayCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "replay", Short: "rebuild state from the event log"}
	c.AddCommand(replayJobCmd(g))
	c.AddCommand(replayProjectionCmds(g)...)
	return c
}

func replayJobCmd(g *globals) *cobra.Command {
	var f historyFlags
	cmd := &cobra.Command{
		Use:   "job JOB [--at TIME | --seq N] [--file export.ndjson]",
		Short: "Show a job's state at a point of its history, and its timeline",
		Long: `replay job folds the job's events up to a point and prints the state it had
then (as job show prints it) and its timeline up to there: one line per event
with its stream sequence, time, state before -> after, who did it, the agent
and lease attempt, and what happened (errors, retries and their causes).

--seq N applies the events with a stream sequence up to N; --at TIME those up
to the last one whose time is at or before TIME (RFC 3339, or local time
"2026-11-02 09:30:00"); neither: the whole history.

With --file, the job is replayed from an export (ferry events export), with
no server at all; JOB may then be a unique prefix of a job in the file, and
the sequences are those of the installation that made the export.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return f.run(g, cmd, args[0]) },
	}
	f.add(cmd, true)
	return cmd
}

// historyFlags are the flags of `replay job` and `job history`.
type historyFlags struct {
	at   string
	seq  uint64
	file string
}

func (f *historyFlags) add(cmd *cobra.Command, file bool) {
	fl := cmd.Flags()
	fl.StringVar(&f.at, "at", "", "the state at this time (RFC 3339, or local time 2026-11-02 09:30:00)")
	fl.Uint64Var(&f.seq, "seq", 0, "the state after this stream sequence")
	if file {
		fl.StringVar(&f.file, "file", "", "replay from this export file (- for stdin) instead of asking the coordinator")
	}
	cmd.MarkFlagsMutuallyExclusive("at", "seq")
}

func (f *historyFlags) run(g *globals, cmd *cobra.Command, id string) error {
	if err := g.check(); err != nil {
		return err
	}
	var p history.Point
	if cmd.Flags().Changed("seq") {
		if f.seq == 0 {
			return errors.New("--seq must be a stream sequence (1 or more)")
		}
		p.Seq = f.seq
	}
	if f.at != "" {
		t, err := services.ParseTime(f.at)
		if err != nil {
			return err
		}
		p.Time = t
	}
	var c *services.CLI
	if f.file != "" {
		// No server, no credentials: only the file.
		c = &services.CLI{Out: os.Stdout, Err: os.Stderr, JSON: g.json(), TTY: term.IsTerminal(int(os.Stdout.Fd()))}
	} else {
		var err error
		if c, err = g.cli(); err != nil {
			return err
		}
	}
	return c.ReplayJob(cmd.Context(), id, p, f.file)
}
