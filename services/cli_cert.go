package services

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
)

// PrintClientCertificate shows a job's client certificate.
func (c *CLI) PrintClientCertificate(id string, r coordinator.ClientCertificateResponse) {
	if c.JSON {
		c.writeJSON(r)
		return
	}
	tw := tabwriter.NewWriter(c.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Job\t%s\n", id)
	fmt.Fprintf(tw, "Location\t%s\n", r.Location)
	fmt.Fprintf(tw, "Store\t%s\n", r.Store)
	fmt.Fprintf(tw, "Thumbprint\t%s\n", r.Thumbprint)
	fmt.Fprintf(tw, "Subject\t%s\n", orDash(r.Subject))
	tw.Flush()
}

// printCertLine adds the client certificate to `job show`.
func printCertLine(w io.Writer, ref *job.CertRef) {
	if ref == nil {
		return
	}
	fmt.Fprintf(w, "Client certificate\t%s\\%s sha1 %s (%s)\n", ref.Location, ref.Store, ref.SHA1, orDash(ref.Subject))
}

// describeCert says in words what a certificate or ownership event did.
func describeCert(p events.Payload) (string, bool) {
	switch e := p.(type) {
	case *events.ClientCertificateSet:
		return fmt.Sprintf("client certificate set (by %s): %s\\%s sha1 %s %s", e.By, e.Location, e.Store, e.SHA1, e.Subject), true
	case *events.ClientCertificateRemoved:
		return "client certificate removed (" + e.Reason + ")", true
	case *events.JobOwnerChanged:
		return fmt.Sprintf("owner changed from %s to %s", e.From, e.To), true
	}
	return "", false
}

// CreateWithCert creates a job and, when cert names a certificate, sets it
// before the job is resumed (a job must not start without the certificate
// its origin needs). If setting the certificate fails, the job stays
// SUSPENDED and the error says which job it is.
func (c *CLI) CreateWithCert(ctx context.Context, req coordinator.CreateRequest, cert CertSpec) (job.Job, error) {
	if cert.Empty() {
		return c.Client.Create(ctx, req)
	}
	resume := req.Resume
	req.Resume = false
	j, err := c.Client.Create(ctx, req)
	if err != nil {
		return j, err
	}
	r, err := c.Client.SetClientCertificate(ctx, j.ID, cert)
	if err != nil {
		return j, fmt.Errorf("job %s was created (SUSPENDED) but its client certificate was not set: %w", j.ID, err)
	}
	j = r.Job
	if resume {
		a, err := c.Client.Action(ctx, j.ID, "resume")
		if err != nil {
			return j, fmt.Errorf("job %s: resume: %w", j.ID, err)
		}
		j = a.Job
	}
	return j, nil
}
