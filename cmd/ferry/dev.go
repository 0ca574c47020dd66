package main

import (
	"fmt"
	"os"
	"time"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func devCmd(g *globals) *cobra.Command {
	var cfg services.DevConfig
	var noOrigin bool
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run every role in one process: embedded NATS JetStream, coordinator, one agent, a demo origin",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := services.NewLogger(services.LogConfig{Level: g.logLvl}, os.Stderr)
			if err != nil {
				return err
			}
			cfg.DataDir = g.dir()
			cfg.DemoOrigin = !noOrigin
			d, err := services.StartDev(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			info := d.Info()
			fmt.Printf(`ferry dev is running.

  coordinator   %s
  certvault     %s
  nats          %s
  agent         %s, writing under %s
  data          %s
`, info.CoordinatorURL, info.CertvaultURL, orNone(info.NATSURL), info.AgentID, info.AgentRoot, info.DataDir)
			if info.DemoOriginURL != "" {
				fmt.Printf("  demo origin   %s/files/  (hello.txt, 1MiB.bin, 64MiB.bin, 1GiB.bin)\n", info.DemoOriginURL)
				fmt.Printf(`
Try it from another terminal:

  go run ./cmd/ferry transfer %s/files/64MiB.bin %s/ferry-demo.bin
  go run ./cmd/ferry job list --all
`, info.DemoOriginURL, info.AgentRoot)
			}
			fmt.Println("\nPress Ctrl-C to stop; jobs and their files survive restarts.")
			select {
			case <-cmd.Context().Done():
			case <-d.Done():
			}
			return d.Close()
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.HTTP, "http", "127.0.0.1:7070", "coordinator listen address")
	f.StringVar(&cfg.Vault, "vault", "127.0.0.1:7071", "certvault listen address")
	f.StringVar(&cfg.NATS.Listen, "nats-listen", "127.0.0.1:4222", `embedded NATS client address for more agents ("none": in-process only)`)
	f.StringVar(&cfg.Root, "root", "", "agent root directory: files are only written under it (default: your home directory)")
	f.StringVar(&cfg.AgentID, "agent-id", "", "agent id (default: dev-<hostname>)")
	f.StringVar(&cfg.DemoAddr, "demo-addr", "127.0.0.1:7443", "demo origin listen address")
	f.BoolVar(&noOrigin, "no-demo-origin", false, "do not start the demo origin")
	f.StringSliceVar(&cfg.OriginCAFiles, "origin-ca", nil, "PEM file of an extra CA the agent trusts for origins (repeatable)")
	f.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "time without a heartbeat after which a dispatch is redelivered")
	f.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", 15*time.Second, "how often lost dispatches and due retries are checked")
	f.DurationVar(&cfg.CheckpointInterval, "checkpoint-interval", time.Second, "progress checkpoint interval")
	f.IntVar(&cfg.Slots, "slots", 4, "background jobs the agent transfers at once (FOREGROUND jobs run besides them)")
	f.DurationVar(&cfg.TimeSlice, "time-slice", time.Minute, "how long a job runs before it yields to a waiting job of its priority")
	f.DurationVar(&cfg.IdleReadTimeout, "idle-read-timeout", 60*time.Second, "a download that receives nothing for this long fails with ERROR_WINHTTP_TIMEOUT (and retries)")
	f.Int64Var(&cfg.MinFreeBytes, "min-free-bytes", 0, "disk space the agent keeps free: a file that would leave less fails with ERROR_DISK_FULL")
	f.IntVar(&cfg.Limits.MaxFilesPerJob, "max-files-per-job", job.DefaultMaxFilesPerJob, "BG_E_TOO_MANY_FILES_IN_JOB beyond this")
	f.IntVar(&cfg.Limits.MaxRangesPerFile, "max-ranges-per-file", job.DefaultMaxRangesPerFile, "BG_E_TOO_MANY_RANGES_IN_FILE beyond this")
	f.IntVar(&cfg.Limits.MaxJobsPerUser, "max-jobs-per-user", job.DefaultMaxJobsPerUser, "BG_E_TOO_MANY_JOBS_PER_USER beyond this many unfinished jobs (administrators are exempt)")
	f.DurationVar(&cfg.JobInactivityTimeout, "job-inactivity-timeout", job.DefaultJobInactivityTimeout, "jobs nobody touched for this long are cancelled")
	return cmd
}

func orNone(s string) string {
	if s == "" {
		return "(in-process only)"
	}
	return s
}
