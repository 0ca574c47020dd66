package main

import (
	"os"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func coordinatorCmd(*globals) *cobra.Command {
	cmd := &cobra.Command{Use: "coordinator", Short: "Run the coordinator role (job API, dispatch, read model, notifications)"}
	cmd.AddCommand(roleRunCmd(func() services.RoleConfig { return &services.CoordinatorConfig{} },
		"Run the coordinator: the job API over HTTPS, the projector and clock, the notifier",
		`Runs the coordinator role in this process: the job API over HTTPS with
client certificates (--cert/--key from the deployment's CA, callers verified
against --ca-cert), the read-model projector, the clock (retries, deadlines,
re-dispatch of lost commands) and the notifier. Job client certificates are
checked in the certvault at --certvault-url.`))
	return cmd
}

func agentCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "agent", Short: "Run an agent (a worker of a pool), or list the agents"}
	cmd.AddCommand(roleRunCmd(func() services.RoleConfig { return &services.AgentConfig{} },
		"Run an agent: take the pool's jobs and transfer their files",
		`Runs one agent: it takes jobs of its --pool from NATS, writes their files
under --root, and gets job client certificates released by the certvault at
--certvault-url with its own identity (--cert/--key).

SIGTERM or Ctrl-C drains it: it takes no new work, stops its transfers at a
checkpoint, hands their dispatches back so that another agent of the pool
(or this one, restarted) resumes them, and exits within --drain-timeout.`))
	cmd.AddCommand(agentListCmd(g))
	return cmd
}

// agentListCmd is `ferry agent list`.
func agentListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the registered agents (administrators) or each pool's agents in total (users)",
		Long: `list shows the agent registry: every agent that heartbeats, with its pool,
slots, running jobs, free disk under its root, when it was last seen and its
state (alive, or expired: silent past its TTL and about to be removed).
Users see each pool's totals only.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			r, err := c.Client.Agents(cmd.Context())
			if err != nil {
				return err
			}
			c.PrintAgents(r)
			return nil
		},
	}
}

// certvaultRunCmd is `ferry certvault run`.
func certvaultRunCmd() *cobra.Command {
	return roleRunCmd(func() services.RoleConfig { return &services.CertvaultConfig{} },
		"Run certvault: the certificate stores and key releases over HTTPS",
		`Runs certvault: the certificate store API and the key release endpoint over
HTTPS (TLS 1.3 only, client certificates verified against --ca-cert), with the
private keys encrypted at rest under the keyring of --keyring-file or
FERRY_VAULT_KEK.`)
}

// roleRunCmd is `ferry <role> run`: settings from --config (or
// $FERRY_CONFIG), then FERRY_* variables, then flags.
func roleRunCmd(newConfig func() services.RoleConfig, short, long string) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "run [--config FILE] [flags]",
		Short: short,
		Long:  long + "\n\n" + services.SettingsHelp(newConfig()),
		Args:  cobra.NoArgs,
		// The FERRY_* environment is read by the config loader, between the
		// file and the flags (the root's hook would rank it above the file).
		PersistentPreRunE: func(*cobra.Command, []string) error { return nil },
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				file = os.Getenv("FERRY_CONFIG")
			}
			cfg := newConfig()
			if err := services.LoadConfig(cfg, services.ConfigSources{File: file, Flags: cmd.Flags()}); err != nil {
				return err
			}
			return services.RunRole(cmd.Context(), cfg, os.Stderr)
		},
	}
	cmd.Flags().StringVar(&file, "config", "", "JSON config file (FERRY_CONFIG)")
	services.BindFlags(cmd.Flags(), newConfig())
	cmd.Flags().SortFlags = false
	return cmd
}
