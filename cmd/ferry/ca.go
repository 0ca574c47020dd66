package main

import (
	"fmt"

	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
)

func caCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Make a certificate authority and the identities of users, agents and services"}
	var dir, td string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Create a CA (ECDSA P-256) in the credentials directory",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d := services.CredentialsDir(dir, g.dir())
			ca, err := services.InitCA(d, td)
			if err != nil {
				return err
			}
			fmt.Printf("CA for trust domain %s written to %s (ca.pem, ca-key.pem)\n", ca.TrustDomain(), d)
			return nil
		},
	}
	initCmd.Flags().StringVar(&td, "trust-domain", "ferry.local", "SPIFFE trust domain of the identities this CA issues")
	var req services.IssueOptions
	issueCmd := &cobra.Command{
		Use:   "issue --role ROLE --name NAME",
		Short: "Issue an identity: spiffe://<trust-domain>/<role>/<name> (writes <name>.pem and <name>-key.pem)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req.Dir = services.CredentialsDir(dir, g.dir())
			if req.Out == "" {
				req.Out = req.Dir
			}
			principal, certFile, err := services.IssueIdentity(req)
			if err != nil {
				return err
			}
			fmt.Printf("%s\n  certificate %s\n", principal, certFile)
			return nil
		},
	}
	f := issueCmd.Flags()
	f.StringVar(&req.Role, "role", "user", "user, admin, agent or service")
	f.StringVar(&req.Name, "name", "", "name of the identity (letters, digits, . _ -)")
	f.StringSliceVar(&req.Hosts, "host", nil, "DNS name or IP of a service identity (repeatable)")
	f.DurationVar(&req.Validity, "validity", 0, "validity (default 24h for agents and services, 30 days for people)")
	f.StringVar(&req.Out, "out", "", "directory to write the identity to (default: the credentials directory)")
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "credentials directory (default: $FERRY_CREDENTIALS, else <data-dir>/pki)")
	_ = issueCmd.MarkFlagRequired("name")
	cmd.AddCommand(initCmd, issueCmd)
	return cmd
}

func whoamiCmd(g *globals) *cobra.Command {
	var binding bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Show what the coordinator received from you: certificate, verdict, principal and role",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.cli()
			if err != nil {
				return err
			}
			info, err := c.Client.Session(cmd.Context(), binding)
			if err != nil {
				return err
			}
			c.PrintSession(info)
			return nil
		},
	}
	cmd.Flags().BoolVar(&binding, "channel-binding", false, "also show the connection's RFC 9266 tls-exporter channel binding")
	return cmd
}
