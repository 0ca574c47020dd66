package services

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
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

// PrintRotateKey shows a key-encryption key rotation: versions and counts
// (the answer holds no key).
func (c *CLI) PrintRotateKey(r certvault.RotateKeyResult) {
	if c.JSON {
		c.writeJSON(r)
		return
	}
	how := map[string]string{
		certvault.NewKeyGenerated: "a new key, written to the keyring file",
		certvault.NewKeyFromFile:  "the newer key found in the keyring file",
		certvault.NewKeyNone:      "no new key; records left on older versions were moved to it",
	}[r.NewKey]
	if how == "" {
		how = r.NewKey
	}
	if r.NewKey == certvault.NewKeyNone && r.Rewrapped == 0 {
		how = "no new key; every record was already on it"
	}
	fmt.Fprintf(c.Out, "key-encryption key version %d is active (was %d): %s\n", r.ActiveVersion, r.PreviousVersion, how)
	fmt.Fprintf(c.Out, "  rewrapped     %d records (%d were already on version %d)\n", r.Rewrapped, r.AlreadyCurrent, r.ActiveVersion)
	var use []string
	for _, u := range r.VersionsInUse {
		use = append(use, fmt.Sprintf("%d (%d records)", u.Version, u.Records))
	}
	if len(use) == 0 {
		use = []string{"none (no records)"}
	}
	fmt.Fprintf(c.Out, "  in use        %s\n", strings.Join(use, ", "))
	if len(r.Retired) > 0 {
		fmt.Fprintf(c.Out, "  retired       %s\n", versionList(r.Retired))
	}
	fmt.Fprintf(c.Out, "  keyring       %s (%s)\n", versionList(r.KeyringVersions), r.Keyring)
	var unused []int
	for _, v := range r.KeyringVersions {
		if v != r.ActiveVersion && !slices.ContainsFunc(r.VersionsInUse, func(u certvault.KEKUse) bool { return u.Version == v }) {
			unused = append(unused, v)
		}
	}
	if len(unused) > 0 {
		fmt.Fprintf(c.Out, "versions %s wrap no record any more: drop them with `ferry certvault rotate-key --finish --retire` once every certvault process runs with version %d\n", versionList(unused), r.ActiveVersion)
	}
}

func versionList(vs []int) string {
	s := make([]string, len(vs))
	for i, v := range vs {
		s[i] = strconv.Itoa(v)
	}
	return strings.Join(s, ", ")
}
