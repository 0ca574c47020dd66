package main

import "github.com/spf13/cobra"

// eventsIOCmds are `ferry events export` and `ferry events import`.
func eventsIOCmds(g *globals) []*cobra.Command { return nil }
