package main

import "github.com/spf13/cobra"

// jobHistoryCmd is `ferry job history`: `ferry replay job` without --file.
func jobHistoryCmd(g *globals) *cobra.Command {
	var f historyFlags
	cmd := &cobra.Command{
		Use:   "history JOB [--at TIME | --seq N]",
		Short: "Show a job's timeline: every event, who did it, errors and retries (see replay job)",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return f.run(g, cmd, args[0]) },
	}
	f.add(cmd, false)
	return cmd
}
