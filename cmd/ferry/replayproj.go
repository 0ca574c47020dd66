package main

import "github.com/spf13/cobra"

// replayProjectionCmds are `ferry replay verify` and `ferry replay rebuild`.
func replayProjectionCmds(g *globals) []*cobra.Command { return nil }
