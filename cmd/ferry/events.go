package main

import (
	"errors"
	"time"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

// eventsCmd is `ferry events`: tail (this file), export and import (eventsio.go).
func eventsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "events", Short: "read, export and import the event log"}
	c.AddCommand(eventsTailCmd(g))
	c.AddCommand(eventsIOCmds(g)...)
	return c
}

func eventsTailCmd(g *globals) *cobra.Command {
	var q services.EventQuery
	var since string
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Show the event log, filtered; --follow goes on with new events (NDJSON with -o json)",
		Long: `tail prints the events of the log you may see, oldest first, one line each:
time, stream sequence, type, job (or agent/…, vault/…), actor and what the event says.
With -o json each line is the event's envelope as stored plus "seq".

Administrators see every event; users see the events of the jobs they own.
Without --follow it stops at the end the log had when it started.`,
		Example: `  ferry events tail --job 01a2 --follow
  ferry events tail --type JobFailed,JobTransientError --since 24h
  ferry events tail --agent host-a --from-seq 1200 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since != "" && q.FromSeq != 0 {
				return errors.New("--since and --from-seq exclude each other: start at a time or at a sequence")
			}
			c, err := g.cli()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if q.Job != "" {
				if q.Job, err = c.ResolveID(ctx, q.Job); err != nil {
					return err
				}
			}
			if since != "" {
				q.Since = services.SinceArg(since, time.Now())
			}
			err = c.TailEvents(ctx, q)
			if err != nil && ctx.Err() != nil {
				return nil // interrupted while following
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&q.Job, "job", "", "only this job's events (ID or unique prefix)")
	f.StringSliceVar(&q.Types, "type", nil, "only events of these types (repeatable or comma-separated, e.g. JobFailed,JobTransientError)")
	f.StringVar(&q.Agent, "agent", "", "only events about this agent: its sessions, and the job and vault events it wrote or that name it")
	f.StringVar(&since, "since", "", "only events at or after this time: RFC 3339 (2026-11-22T08:00:00Z) or a duration back from now (90m, 24h)")
	f.Uint64Var(&q.FromSeq, "from-seq", 0, "start at this stream sequence")
	f.BoolVarP(&q.Follow, "follow", "f", false, "keep showing new events until interrupted")
	cmd.MarkFlagsMutuallyExclusive("since", "from-seq")
	return cmd
}
