package main

import "github.com/spf13/cobra"

// replayCmd is `ferry replay`: job (this file), verify and rebuild (replayproj.go).
func replayCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "replay", Short: "rebuild state from the event log"}
	c.AddCommand(replayProjectionCmds(g)...)
	return c
}
