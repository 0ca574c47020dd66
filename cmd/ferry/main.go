// Command ferry is the one binary of ferry: the all-in-one dev stack, the
// service roles, and the client commands. It only parses arguments; the work
// is done in package services.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
)

// globals are the flags every command shares.
type globals struct {
	addr    string
	dataDir string
	output  string
	logLvl  string
	caCert  string
	cert    string
	key     string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "ferry: background transfers (BITS semantics) for fleets of hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.addr, "addr", "", "coordinator URL (default: $FERRY_ADDR, else the running `ferry dev`)")
	pf.StringVar(&g.dataDir, "data-dir", "", "data directory (default: $FERRY_DATA_DIR, else ~/.local/share/ferry)")
	pf.StringVarP(&g.output, "output", "o", "text", "output format: text or json")
	pf.StringVar(&g.logLvl, "log-level", "info", "log level: trace, debug, info, warn, error")
	pf.StringVar(&g.caCert, "ca-cert", "", "CA certificate (PEM) that signs the coordinator (default: <data-dir>/pki/ca.pem)")
	pf.StringVar(&g.cert, "cert", "", "client certificate (PEM) to present (default: <data-dir>/pki/admin.pem, made by ferry dev)")
	pf.StringVar(&g.key, "key", "", "private key (PEM) of --cert")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error { return envDefaults(cmd) }
	root.AddCommand(devCmd(g), transferCmd(g), jobCmd(g), caCmd(g), whoamiCmd(g), certCmd(g), certvaultCmd(g), bandwidthCmd(g), coordinatorCmd(g), agentCmd(g), eventsCmd(g), replayCmd(g))
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return services.ExitOK
	}
	printError(g.json(), err)
	var exit *services.ExitErr
	if errors.As(err, &exit) {
		return exit.Code
	}
	return services.ExitError
}

// printError reports a failed command on stderr: one line "ferry: …", or
// with -o json one JSON object — the API's problem document (with code and
// hresult) when the server refused, else {"detail": "…"}.
func printError(asJSON bool, err error) {
	if !asJSON {
		fmt.Fprintln(os.Stderr, "ferry:", err)
		return
	}
	var v any = map[string]string{"detail": err.Error()}
	var apiErr *services.APIError
	if errors.As(err, &apiErr) {
		v = apiErr.Problem
	}
	b, merr := json.Marshal(v)
	if merr != nil {
		fmt.Fprintln(os.Stderr, "ferry:", err)
		return
	}
	fmt.Fprintln(os.Stderr, string(b))
}

// envDefaults fills every flag the user did not set from FERRY_<FLAG> (upper
// case, dashes as underscores): flags win over the environment, which wins
// over defaults.
func envDefaults(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := "FERRY_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok {
			if err := f.Value.Set(v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

func (g *globals) json() bool { return g.output == "json" }

func (g *globals) check() error {
	if g.output != "text" && g.output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", g.output)
	}
	return nil
}

func (g *globals) dir() string {
	if g.dataDir != "" {
		return g.dataDir
	}
	return services.DefaultDataDir()
}

// cli builds the renderer and the client for client commands.
func (g *globals) cli() (*services.CLI, error) {
	if err := g.check(); err != nil {
		return nil, err
	}
	return g.cliAt(g.addr)
}

// cliAt is cli for a given coordinator address ("" to discover it).
func (g *globals) cliAt(addr string) (*services.CLI, error) {
	c, err := services.Discover(services.ClientConfig{Addr: addr, DataDir: g.dir(), CACert: g.caCert, Cert: g.cert, Key: g.key})
	if err != nil {
		return nil, err
	}
	return &services.CLI{Out: os.Stdout, Err: os.Stderr, JSON: g.json(), TTY: term.IsTerminal(int(os.Stdout.Fd())), Client: c}, nil
}
