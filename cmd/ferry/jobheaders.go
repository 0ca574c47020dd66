package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// jobHeadersCmd is `ferry job headers`: write-only custom headers
// (IBackgroundCopyJobHttpOptions3::MakeCustomHeadersWriteOnly). Plain
// custom headers are set with -H on job create, set and transfer.
func jobHeadersCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "headers", Short: "Make a job's custom headers write-only, or clear its write-only headers"}
	cmd.AddCommand(jobHeadersWriteOnlyCmd(g), jobHeadersClearCmd(g))
	return cmd
}

func jobHeadersWriteOnlyCmd(g *globals) *cobra.Command {
	var headers []string
	var fromFile string
	cmd := &cobra.Command{
		Use:   `write-only JOB [-H "Name: value"...] [--from-file FILE|-]`,
		Short: "Make custom headers write-only: kept in certvault, sent by the agent, never shown (owner only)",
		Long: `write-only makes custom headers write-only (BITS MakeCustomHeadersWriteOnly):
their values are kept in certvault, encrypted like private keys, and released
only to the agent that holds the job's lease; the job, its events and every
answer show their names only.

With -H or --from-file, those headers become the job's write-only headers.
Without, the job's plain custom headers (set with -H on job create or set) are
moved; they were in the job's events when they were set, so give a secret
here to keep it out of them from the start. Either way the headers given
replace any write-only headers the job had, and a write-only header replaces
plain headers of its name. --from-file reads "Name: value" lines from a file,
or from standard input with "-" (blank lines and lines starting with # are
skipped), which keeps values out of the shell history and the process list.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			lines := headers
			if fromFile != "" {
				more, err := readHeaderLines(cmd.InOrStdin(), fromFile)
				if err != nil {
					return err
				}
				lines = append(lines, more...)
				if len(lines) == 0 {
					return fmt.Errorf("--from-file %s holds no header lines", fromFile)
				}
			}
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.MakeHeadersWriteOnly(cmd.Context(), id, lines)
			if err != nil {
				return err
			}
			c.PrintAction("headers write-only", r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&headers, "header", "H", nil, `write-only header "Name: value" (repeatable)`)
	f.StringVar(&fromFile, "from-file", "", `read "Name: value" lines from FILE ("-": standard input)`)
	return cmd
}

func jobHeadersClearCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "clear-write-only JOB",
		Short: "Remove the job's write-only headers and delete their values from certvault (S_FALSE when none; owner only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.ClearWriteOnlyHeaders(cmd.Context(), id)
			if err != nil {
				return err
			}
			c.PrintAction("headers clear-write-only", r)
			return nil
		},
	}
}

// readHeaderLines reads header lines from path, or from stdin for "-".
// Errors never quote a line.
func readHeaderLines(stdin io.Reader, path string) ([]string, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	var out []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--from-file %s: %w", path, err)
	}
	return out, nil
}
