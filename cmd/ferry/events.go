package main

import "github.com/spf13/cobra"

// eventsCmd is `ferry events`: tail (this file), export and import (eventsio.go).
func eventsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "events", Short: "read, export and import the event log"}
	c.AddCommand(eventsIOCmds(g)...)
	return c
}
