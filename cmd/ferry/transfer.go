package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func transferCmd(g *globals) *cobra.Command {
	var o services.TransferOptions
	var opts optionFlags
	var ff fileFlags
	cmd := &cobra.Command{
		Use:   "transfer URL DEST [URL DEST...]",
		Short: "Download files: create a job, resume it, watch it, complete it",
		Long: `transfer creates a job for the given files, resumes it, shows its progress and
completes it once every file is transferred, like bitsadmin /transfer.

It uses the coordinator given by --addr or FERRY_ADDR, else the running
'ferry dev'. With neither, it starts an embedded stack in this process for the
one transfer (its job history is kept in the data directory).

Exit status: 0 done, 1 failed (job in ERROR), 2 cancelled, 3 --timeout.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := services.FileArgs(args)
			if err != nil {
				return err
			}
			if err := ff.apply(files); err != nil {
				return err
			}
			o.Options, o.MaxDownloadTimeS = opts.patch(cmd), opts.maxDownloadSeconds(cmd)
			c, err := g.cli()
			ctx := cmd.Context()
			if err == nil {
				err = c.Client.Ping(ctx)
			}
			if err != nil {
				if g.addr != "" || os.Getenv("FERRY_ADDR") != "" {
					return err
				}
				// Nothing running: an embedded stack for this one transfer.
				log, lerr := services.NewLogger(services.LogConfig{Level: "warn"}, os.Stderr)
				if lerr != nil {
					return lerr
				}
				d, derr := services.StartDev(ctx, services.DevConfig{
					DataDir: g.dir(), HTTP: "127.0.0.1:0", Vault: "127.0.0.1:0", NATS: services.NATSConfig{Listen: "none"},
					Root: services.CommonRoot(files), ReconcileInterval: time.Second,
				}, log)
				if derr != nil {
					return fmt.Errorf("no coordinator is running and an embedded one could not start: %w", derr)
				}
				defer d.Close()
				if c, err = g.cliAt(d.Info().CoordinatorURL); err != nil {
					return err
				}
				if !g.json() {
					fmt.Fprintln(os.Stderr, "(no ferry dev running: using an embedded stack for this transfer)")
				}
			}
			certDefaults(cmd.Flags(), &o.Cert)
			j, err := c.Transfer(ctx, files, o)
			if errors.Is(err, context.Canceled) {
				return fmt.Errorf("interrupted; job %s goes on (ferry job show %s)", j.ID, j.ID)
			}
			if err != nil {
				return err
			}
			if c.JSON {
				return nil
			}
			for _, f := range j.Files {
				fmt.Fprintf(c.Out, "%s  %s\n", f.SHA256, f.LocalName)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.DisplayName, "name", "", "display name of the job")
	f.StringVar(&o.Priority, "priority", "", "FOREGROUND, HIGH, NORMAL (default) or LOW")
	f.StringVar(&o.Pool, "pool", "", "agent pool that runs the job (default: default)")
	f.StringVar(&o.Agent, "agent", "", "pin the job to this one agent")
	f.DurationVar(&o.Timeout, "timeout", 0, "give up waiting after this long (the job goes on)")
	addCertFlags(cmd, &o.Cert)
	addOptionFlags(cmd, &opts, false)
	addFileFlags(cmd, &ff)
	return cmd
}
