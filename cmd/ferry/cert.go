package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
	"golang.org/x/term"
)

func certCmd(g *globals) *cobra.Command {
	var vaultAddr, location, store string
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Manage certvault's client-certificate stores (PEM and PKCS#12 .pfx)",
		Long: `Certificates live in stores addressed like Windows certificate stores: a
location (CURRENT_USER, LOCAL_MACHINE, ... or 0..7) and a store name (MY, CA,
ROOT, SPC or your own). Private keys are encrypted at rest and never read
back; jobs name a certificate by location, store and SHA-1 thumbprint.`,
	}
	cli := func() (*services.CLI, error) {
		if err := g.check(); err != nil {
			return nil, err
		}
		c, err := services.Discover(services.ClientConfig{Service: "certvault", Addr: vaultAddr, DataDir: g.dir(), CACert: g.caCert, Cert: g.cert, Key: g.key})
		if err != nil {
			return nil, err
		}
		return &services.CLI{Out: os.Stdout, Err: os.Stderr, JSON: g.json(), Client: c}, nil
	}
	var pemFile, pfxFile, passFile string
	importCmd := &cobra.Command{
		Use:   "import (--pem FILE | --pfx FILE [--password-file FILE])",
		Short: "Import a certificate with its private key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (pemFile == "") == (pfxFile == "") {
				return errors.New("give exactly one of --pem or --pfx")
			}
			var req services.CertImport
			if pemFile != "" {
				b, err := os.ReadFile(pemFile)
				if err != nil {
					return err
				}
				s := string(b)
				req.PEM = &s
			} else {
				b, err := os.ReadFile(pfxFile)
				if err != nil {
					return err
				}
				req.PFX = b
				pw, err := readPassword(passFile)
				if err != nil {
					return err
				}
				req.Password = &pw
			}
			c, err := cli()
			if err != nil {
				return err
			}
			info, err := c.Client.ImportCert(cmd.Context(), location, store, req)
			if err != nil {
				return err
			}
			c.PrintCert(info)
			return nil
		},
	}
	importCmd.Flags().StringVar(&pemFile, "pem", "", "PEM file with the certificate (and chain) and its unencrypted private key")
	importCmd.Flags().StringVar(&pfxFile, "pfx", "", "PKCS#12 (.pfx/.p12) file")
	importCmd.Flags().StringVar(&passFile, "password-file", "", "file holding the .pfx password (default: ask on the terminal)")
	listCmd := &cobra.Command{
		Use:   "list",
		Short: "List a store's certificates (never their keys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := cli()
			if err != nil {
				return err
			}
			certs, err := c.Client.ListCerts(cmd.Context(), location, store)
			if err != nil {
				return err
			}
			c.PrintCerts(certs)
			return nil
		},
	}
	removeCmd := &cobra.Command{
		Use:   "remove SHA1",
		Short: "Remove a certificate and its key from a store",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := cli()
			if err != nil {
				return err
			}
			if err := c.Client.RemoveCert(cmd.Context(), location, store, args[0]); err != nil {
				return err
			}
			if !c.JSON {
				fmt.Fprintf(c.Out, "removed %s from %s\\%s\n", args[0], location, store)
			}
			return nil
		},
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&vaultAddr, "vault-addr", "", "certvault URL (default: $FERRY_VAULT_ADDR, else the running `ferry dev`)")
	pf.StringVar(&location, "location", "CURRENT_USER", "store location: CURRENT_USER, LOCAL_MACHINE, ... or 0..7")
	pf.StringVar(&store, "store", "MY", "store name")
	cmd.AddCommand(importCmd, listCmd, removeCmd)
	return cmd
}

// readPassword reads a .pfx password from a file (its first line) or, on a
// terminal, from a prompt without echo.
func readPassword(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", err
		}
		if i := bytes.IndexAny(b, "\r\n"); i >= 0 {
			b = b[:i]
		}
		return string(b), nil
	}
	if !term.IsTerminal(int(os.Stdin.Fd())) {
		return "", errors.New("the .pfx password: give --password-file (stdin is not a terminal)")
	}
	fmt.Fprint(os.Stderr, "Password: ")
	b, err := term.ReadPassword(int(os.Stdin.Fd()))
	fmt.Fprintln(os.Stderr)
	return string(b), err
}
