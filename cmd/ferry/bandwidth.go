package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/dispatch"
	"github.com/spf13/cobra"
)

func bandwidthCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bandwidth", Short: "Show or change the bandwidth limits of a pool's agents"}
	var pool string
	show := &cobra.Command{
		Use:   "show",
		Short: "Show a pool's bandwidth limits",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			b, err := c.Client.Bandwidth(cmd.Context(), pool)
			if err != nil {
				return err
			}
			c.PrintBandwidth(pool, b)
			return nil
		},
	}
	var total, fg, high, normal, low string
	set := &cobra.Command{
		Use:   "set",
		Short: "Replace a pool's bandwidth limits (administrators); running transfers follow at once",
		Long: `set replaces the limits of every agent of the pool. Rates are bytes per second
with an optional unit: 500K, 10M, 1G (powers of 1000), 10MiB (powers of 1024);
0 or an omitted flag means no limit. --total bounds each agent's transfers
together; the class flags bound each priority class on an agent.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			var b dispatch.Bandwidth
			if b.Total, err = parseRate(total); err != nil {
				return fmt.Errorf("--total: %w", err)
			}
			for _, cl := range []struct {
				p job.Priority
				v string
			}{{job.Foreground, fg}, {job.High, high}, {job.Normal, normal}, {job.Low, low}} {
				r, err := parseRate(cl.v)
				if err != nil {
					return fmt.Errorf("--%s: %w", strings.ToLower(string(cl.p)), err)
				}
				if r > 0 {
					if b.Class == nil {
						b.Class = map[job.Priority]int64{}
					}
					b.Class[cl.p] = r
				}
			}
			out, err := c.Client.SetBandwidth(cmd.Context(), pool, b)
			if err != nil {
				return err
			}
			c.PrintBandwidth(pool, out)
			return nil
		},
	}
	f := set.Flags()
	f.StringVar(&total, "total", "", "limit of all of an agent's transfers together")
	f.StringVar(&fg, "foreground", "", "limit of FOREGROUND jobs")
	f.StringVar(&high, "high", "", "limit of HIGH jobs")
	f.StringVar(&normal, "normal", "", "limit of NORMAL jobs")
	f.StringVar(&low, "low", "", "limit of LOW jobs")
	for _, c := range []*cobra.Command{show, set} {
		c.Flags().StringVar(&pool, "pool", job.DefaultPool, "agent pool")
	}
	cmd.AddCommand(show, set)
	return cmd
}

// parseRate parses "10M", "1.5G", "10MiB", "500K" or a byte count.
func parseRate(s string) (int64, error) {
	s = strings.TrimSpace(strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "/s"), "B"))
	if s == "" {
		return 0, nil
	}
	mult := 1.0
	units := []struct {
		suffix string
		m      float64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"K", 1e3}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}}
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.m
			break
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a rate such as 10M or 500KiB", s)
	}
	return int64(v * mult), nil
}
