package main

import (
	"errors"
	"os"
	"strings"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// eventsIOCmds are `ferry events export` and `ferry events import`.
func eventsIOCmds(g *globals) []*cobra.Command {
	var since, kinds string
	export := &cobra.Command{
		Use:   "export [--since TIME] [--kind job,agent,vault] > FILE.ndjson",
		Short: "Write the event log as NDJSON on stdout, in stream order, IDs kept (administrators)",
		Long: `export writes every event of the log, up to its last one when the export
starts, as NDJSON on standard output: one stored envelope per line with its
stream sequence ("seq") and subject. --since keeps the events whose time is at
or after TIME; --kind keeps some kinds of subjects. The count goes to stderr.
A failed or cut-short export exits 1 (what was written is incomplete).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			var o services.ExportOptions
			if since != "" {
				if o.Since, err = services.ParseTime(since); err != nil {
					return err
				}
			}
			if kinds != "" {
				o.Kinds = strings.Split(kinds, ",")
			}
			if term.IsTerminal(int(os.Stdout.Fd())) {
				return errors.New("export writes NDJSON on stdout: redirect it to a file (ferry events export > events.ndjson)")
			}
			return c.Export(cmd.Context(), os.Stdout, o)
		},
	}
	export.Flags().StringVar(&since, "since", "", "only events at or after this time (RFC 3339, or local time 2026-11-02 09:30:00)")
	export.Flags().StringVar(&kinds, "kind", "", "only these kinds of events: job, agent, vault (comma-separated; default all)")

	imp := &cobra.Command{
		Use:   "import FILE.ndjson|-",
		Short: "Append an export's events that are not in the log yet, IDs and per-subject order kept (administrators)",
		Long: `import sends an export (a file, or - for stdin) to the coordinator, which
appends the events it does not have, keeping their IDs and each subject's
order (they get this installation's sequences). Events already there are
skipped, so importing a file again imports nothing. The first bad line ends
the import: the lines before it are imported, nothing from it on, and the
error names the line. See docs/operations.md, "Replay and history".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			return c.Import(cmd.Context(), args[0])
		},
	}
	return []*cobra.Command{export, imp}
}
