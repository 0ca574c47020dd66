package main

import (
	"github.com/ferry-dev/ferry/services"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// jobCertCmd is `ferry job cert`: a job's HTTPS client certificate
// (IBackgroundCopyJobHttpOptions::SetClientCertificateByID / ByName,
// GetClientCertificate, RemoveClientCertificate).
func jobCertCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "cert", Short: "Set, show or remove a job's HTTPS client certificate"}
	cmd.AddCommand(jobCertSetCmd(g), jobCertShowCmd(g), jobCertRemoveCmd(g))
	return cmd
}

func jobCertSetCmd(g *globals) *cobra.Command {
	var spec services.CertSpec
	cmd := &cobra.Command{
		Use:   "set JOB (--thumbprint HEX | --subject NAME) [--location L] [--store S]",
		Short: "Name the job's client certificate, a certvault certificate of yours (owner only)",
		Long: `set names the certificate the job presents to origins that ask for one.
It is looked up in certvault as the job's owner sees it: --location is a
BG_CERT_STORE_LOCATION name or 0..7 (default CURRENT_USER), --store a store
name (default MY). Give the SHA-1 thumbprint in any hex spelling
("ab12…", "AB:12:…", "ab 12 …"), or a subject name in BITS form: RDN values
in encoding order, as in "Example, Ops, alice".`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.SetClientCertificate(cmd.Context(), id, spec)
			if err != nil {
				return err
			}
			c.PrintAction("cert set", r)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.Thumbprint, "thumbprint", "", "SHA-1 thumbprint of the certificate (hex)")
	f.StringVar(&spec.Subject, "subject", "", "subject name of the certificate (BITS form)")
	f.StringVar(&spec.Location, "location", "CURRENT_USER", "store location: a BG_CERT_STORE_LOCATION name or 0..7")
	f.StringVar(&spec.Store, "store", "MY", "store name")
	cmd.MarkFlagsMutuallyExclusive("thumbprint", "subject")
	cmd.MarkFlagsOneRequired("thumbprint", "subject")
	return cmd
}

func jobCertShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show JOB",
		Short: "Show the job's client certificate (RPC_X_BAD_STUB_DATA when none is set)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.ClientCertificate(cmd.Context(), id)
			if err != nil {
				return err
			}
			c.PrintClientCertificate(id, r)
			return nil
		},
	}
}

func jobCertRemoveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "remove JOB",
		Aliases: []string{"rm"},
		Short:   "Remove the job's client certificate (S_FALSE when none is set; owner only)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.RemoveClientCertificate(cmd.Context(), id)
			if err != nil {
				return err
			}
			c.PrintAction("cert remove", r)
			return nil
		},
	}
}

func jobTakeOwnershipCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "take-ownership JOB",
		Short: "Become the job's owner (administrators only); its client certificate is removed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, id, err := g.jobCLI(cmd, args[0])
			if err != nil {
				return err
			}
			r, err := c.Client.TakeOwnership(cmd.Context(), id)
			if err != nil {
				return err
			}
			c.PrintAction("take-ownership", r)
			return nil
		},
	}
}

// addCertFlags adds --cert-location, --cert-store, --cert-thumbprint and
// --cert-subject to a command that creates a job; the certificate is set
// after the job is created and before it is resumed.
func addCertFlags(cmd *cobra.Command, spec *services.CertSpec) {
	f := cmd.Flags()
	f.StringVar(&spec.Thumbprint, "cert-thumbprint", "", "client certificate: SHA-1 thumbprint (hex)")
	f.StringVar(&spec.Subject, "cert-subject", "", "client certificate: subject name (BITS form)")
	f.StringVar(&spec.Location, "cert-location", "", "client certificate: store location (default CURRENT_USER)")
	f.StringVar(&spec.Store, "cert-store", "", "client certificate: store name (default MY)")
	cmd.MarkFlagsMutuallyExclusive("cert-thumbprint", "cert-subject")
}

// certDefaults fills the location and store of a certificate that was
// named, and clears a spec that names none (so only --cert-location or
// --cert-store alone still reach the coordinator, which refuses them with
// RPC_X_NULL_REF_POINTER).
func certDefaults(f *pflag.FlagSet, spec *services.CertSpec) {
	if spec.Thumbprint == "" && spec.Subject == "" && !f.Changed("cert-location") && !f.Changed("cert-store") {
		*spec = services.CertSpec{}
		return
	}
	if spec.Location == "" {
		spec.Location = "CURRENT_USER"
	}
	if spec.Store == "" {
		spec.Store = "MY"
	}
}
