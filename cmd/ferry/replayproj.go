package main

import (
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/spf13/cobra"
)

// replayProjectionCmds are `ferry replay verify` and `ferry replay rebuild`.
func replayProjectionCmds(g *globals) []*cobra.Command {
	var verifyProjection string
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Replay the whole log into a scratch bucket and compare it with the live read model (administrators)",
		Long: `verify rebuilds every projection (the jobs read model) from sequence 1 into a
temporary bucket, waits until the live projector has passed the same point of
the log, and compares the two entry by entry; entries that moved meanwhile are
checked again against their job's own events. Each mismatch is listed: the
job, what kind (differs, missing, unexpected, behind, bad-version,
undecodable), the live and replayed versions and the fields that differ.

Exit status: 0 the read model agrees with the log, 4 it does not, 1 the
verification could not run. Progress goes to stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			return c.VerifyProjections(cmd.Context(), verifyProjection)
		},
	}
	verify.Flags().StringVar(&verifyProjection, "projection", "", "projection to verify (default: all; there is: "+coordinator.JobsProjection+")")

	var rebuildProjection string
	var switchTimeout time.Duration
	rebuild := &cobra.Command{
		Use:   "rebuild",
		Short: "Build a new generation of a projection from the log and switch every coordinator to it (administrators)",
		Long: `rebuild replays the whole log into a new bucket (ferry_jobs_<n>) while the
current one keeps serving, catches up with the end of the log, then moves the
projection's pointer: every coordinator catches up on the new bucket and
switches its queries and projector to it without a pause, and the old bucket
is deleted once no coordinator reads it. Readers never see a partial model.

Exit status 0 when the new generation is current and the old one deleted; 1
otherwise (the message says whether the switch was made). Progress goes to
stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			return c.RebuildProjection(cmd.Context(), rebuildProjection, switchTimeout)
		},
	}
	rebuild.Flags().StringVar(&rebuildProjection, "projection", coordinator.JobsProjection, "projection to rebuild")
	rebuild.Flags().DurationVar(&switchTimeout, "switch-timeout", coordinator.DefaultSwitchTimeout,
		"how long to wait for every coordinator to leave the old generation before deleting it")
	return []*cobra.Command{verify, rebuild}
}
