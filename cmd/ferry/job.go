package main

import (
	"fmt"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func jobCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "job", Short: "Create, control and inspect jobs"}
	cmd.AddCommand(jobCreateCmd(g), jobAddFileCmd(g), jobListCmd(g), jobShowCmd(g), jobWatchCmd(g), jobSetCmd(g))
	cmd.AddCommand(jobCertCmd(g), jobHeadersCmd(g), jobTakeOwnershipCmd(g))
	cmd.AddCommand(jobHistoryCmd(g))
	for _, a := range []struct{ name, short string }{
		{"resume", "Queue a job for transfer (BG_E_EMPTY without files)"},
		{"suspend", "Stop a job's transfer; resume continues where it stopped"},
		{"cancel", "Cancel a job and delete its temporary files (final)"},
		{"complete", "Make a job's transferred files visible under their names (final)"},
	} {
		cmd.AddCommand(jobActionCmd(g, a.name, a.short))
	}
	return cmd
}

func jobCreateCmd(g *globals) *cobra.Command {
	var req coordinator.CreateRequest
	var cert services.CertSpec
	var minDelay, noProgress time.Duration
	var opts optionFlags
	var ff fileFlags
	cmd := &cobra.Command{
		Use:   "create [URL DEST...]",
		Short: "Create a job (SUSPENDED) with optional files",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			if len(args) > 0 {
				if req.Files, err = services.FileArgs(args); err != nil {
					return err
				}
			}
			if err := ff.apply(req.Files); err != nil {
				return err
			}
			req.Options, req.MaxDownloadTimeS = opts.patch(cmd), opts.maxDownloadSeconds(cmd)
			if cmd.Flags().Changed("min-retry-delay") {
				s := int64(minDelay / time.Second)
				req.MinimumRetryDelayS = &s
			}
			if cmd.Flags().Changed("no-progress-timeout") {
				s := int64(noProgress / time.Second)
				req.NoProgressTimeoutS = &s
			}
			certDefaults(cmd.Flags(), &cert)
			j, err := c.CreateWithCert(cmd.Context(), req, cert)
			if err != nil {
				return err
			}
			if c.JSON {
				c.PrintJob(j)
			} else {
				fmt.Fprintln(c.Out, j.ID)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.DisplayName, "name", "", "display name (at most 256 characters)")
	f.StringVar(&req.Description, "description", "", "description")
	f.StringVar(&req.Priority, "priority", "", "FOREGROUND, HIGH, NORMAL (default) or LOW")
	f.StringVar(&req.Pool, "pool", "", "agent pool that runs the job (default: default)")
	f.StringVar(&req.Agent, "agent", "", "pin the job to this one agent (it waits for it while it is offline)")
	f.BoolVar(&req.Resume, "resume", false, "resume the job right away")
	f.DurationVar(&minDelay, "min-retry-delay", 600*time.Second, "MinimumRetryDelay (at least 5s)")
	f.DurationVar(&noProgress, "no-progress-timeout", 14*24*time.Hour, "NoProgressTimeout (0: every error is fatal)")
	addCertFlags(cmd, &cert)
	addOptionFlags(cmd, &opts, false)
	addFileFlags(cmd, &ff)
	return cmd
}

func jobAddFileCmd(g *globals) *cobra.Command {
	var ff fileFlags
	cmd := &cobra.Command{
		Use:   "add-file JOB URL DEST [URL DEST...]",
		Short: "Add files to a job (they run in order, after its other files)",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			files, err := services.FileArgs(args[1:])
			if err != nil {
				return err
			}
			if err := ff.apply(files); err != nil {
				return err
			}
			id, err := c.ResolveID(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.AddFiles(cmd.Context(), id, files)
			if err != nil {
				return err
			}
			c.PrintAction("add-file", r)
			return nil
		},
	}
	addFileFlags(cmd, &ff)
	return cmd
}

func jobActionCmd(g *globals, action, short string) *cobra.Command {
	return &cobra.Command{
		Use:   action + " JOB",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.Action(cmd.Context(), id, action)
			if err != nil {
				return err
			}
			c.PrintAction(action, r)
			return nil
		},
	}
}

func jobListCmd(g *globals) *cobra.Command {
	var all bool
	var state string
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List jobs (ACKNOWLEDGED and CANCELLED ones only with --all)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			jobs, err := c.Client.List(cmd.Context(), all, state)
			if err != nil {
				return err
			}
			c.PrintJobs(jobs)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include ACKNOWLEDGED and CANCELLED jobs")
	cmd.Flags().StringVar(&state, "state", "", "only jobs in these states (comma-separated)")
	return cmd
}

func jobShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show JOB",
		Short: "Show a job: state, progress, times, error, files",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			j, err := c.Client.Get(cmd.Context(), id)
			if err != nil {
				return err
			}
			c.PrintJob(j)
			return nil
		},
	}
}

func jobWatchCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "watch JOB",
		Short: "Show a job's events as they happen (NDJSON with -o json)",
		Long: `watch prints the job's history and follows it until the job is TRANSFERRED,
ERROR, ACKNOWLEDGED or CANCELLED (or forever with --follow).
Exit status: 0, 1 if the job is in ERROR, 2 if it was cancelled.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			var j job.Job
			err = c.Watch(cmd.Context(), id, &j, func(j *job.Job) bool {
				if follow {
					return false
				}
				switch j.State {
				case job.Transferred:
					return !j.PendingComplete
				case job.Errored, job.Acknowledged, job.Cancelled:
					return !j.PendingCleanup
				}
				return false
			})
			if err != nil {
				return err
			}
			switch j.State {
			case job.Errored:
				return &services.ExitErr{Code: services.ExitError, Err: fmt.Errorf("job %s is in ERROR", id)}
			case job.Cancelled:
				return &services.ExitErr{Code: services.ExitCancelled, Err: fmt.Errorf("job %s was cancelled", id)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep following after the job settles")
	return cmd
}

func jobSetCmd(g *globals) *cobra.Command {
	var req coordinator.PatchRequest
	var name, desc, prio string
	var minDelay, noProgress time.Duration
	var opts optionFlags
	cmd := &cobra.Command{
		Use:   "set JOB",
		Short: "Change job properties: priority, name, retry policy, HTTP options, notifications",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			f := cmd.Flags()
			if f.Changed("name") {
				req.DisplayName = &name
			}
			if f.Changed("description") {
				req.Description = &desc
			}
			if f.Changed("priority") {
				req.Priority = &prio
			}
			if f.Changed("min-retry-delay") {
				s := int64(minDelay / time.Second)
				req.MinimumRetryDelayS = &s
			}
			if f.Changed("no-progress-timeout") {
				s := int64(noProgress / time.Second)
				req.NoProgressTimeoutS = &s
			}
			req.Options, req.MaxDownloadTimeS = opts.patch(cmd), opts.maxDownloadSeconds(cmd)
			id, err := c.ResolveID(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.Patch(cmd.Context(), id, req)
			if err != nil {
				return err
			}
			c.PrintAction("set", r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "display name")
	f.StringVar(&desc, "description", "", "description")
	f.StringVar(&prio, "priority", "", "FOREGROUND, HIGH, NORMAL or LOW")
	f.DurationVar(&minDelay, "min-retry-delay", 0, "MinimumRetryDelay")
	f.DurationVar(&noProgress, "no-progress-timeout", 0, "NoProgressTimeout")
	addOptionFlags(cmd, &opts, true)
	return cmd
}

// jobCLI builds the CLI and resolves a job argument (ID or unique prefix).
func (g *globals) jobCLI(cmd *cobra.Command, arg string) (*services.CLI, string, error) {
	c, err := g.cli()
	if err != nil {
		return nil, "", err
	}
	id, err := c.ResolveID(cmd.Context(), arg)
	return c, id, err
}
