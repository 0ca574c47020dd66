package services

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/ferry-dev/ferry/certvault"
)

// PrintCerts shows certificates of a store (metadata only: there is no way
// to read a key back).
func (c *CLI) PrintCerts(certs []certvault.CertInfo) {
	if c.JSON {
		c.writeJSON(struct {
			Certificates []certvault.CertInfo `json:"certificates"`
		}{certs})
		return
	}
	if len(certs) == 0 {
		fmt.Fprintln(c.Out, "No certificates.")
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SHA1\tSUBJECT\tNOT AFTER\tKEY")
	for _, ci := range certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", ci.SHA1, ci.Subject, ci.NotAfter.Local().Format(time.DateOnly), ci.KeyAlgorithm)
	}
	tw.Flush()
}

// PrintCert shows one imported certificate.
func (c *CLI) PrintCert(ci certvault.CertInfo) {
	if c.JSON {
		c.writeJSON(ci)
		return
	}
	fmt.Fprintf(c.Out, "imported into %s\\%s: %s\n  subject %s\n  sha256  %s\n  valid   %s to %s\n",
		ci.Location, ci.Store, ci.SHA1, ci.Subject, ci.SHA256,
		ci.NotBefore.Local().Format(time.DateOnly), ci.NotAfter.Local().Format(time.DateOnly))
}
