package download

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"time"
)

// verifyServer is the server-certificate check of a client with BITS
// security flags: the checks crypto/tls makes (chain to RootCAs, validity
// dates, serverAuth usage, host name), each failure dropped only when its
// flag is set. It returns the same x509 error types crypto/tls does, so
// failures are classified alike. host is the name to check, "" for the SNI
// name the connection used; with neither (an IP address reached through a
// proxy) the host name check fails closed unless it is ignored.
func verifyServer(o ClientOptions, host string) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: the server sent no certificate")
		}
		leaf := cs.PeerCertificates[0]
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		now := time.Now()
		opts := x509.VerifyOptions{
			Roots:         o.RootCAs,
			Intermediates: inter,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if o.IgnoreWrongUsage {
			opts.KeyUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageAny}
		}
		_, err := leaf.Verify(opts)
		var invalid x509.CertificateInvalidError
		if err != nil && o.IgnoreCertDateInvalid && errors.As(err, &invalid) && invalid.Reason == x509.Expired {
			// Judge the chain at the edge of the leaf's validity
			// closest to now; an authority that was not valid then
			// still fails.
			opts.CurrentTime = now
			if now.After(leaf.NotAfter) {
				opts.CurrentTime = leaf.NotAfter
			} else if now.Before(leaf.NotBefore) {
				opts.CurrentTime = leaf.NotBefore
			}
			_, err = leaf.Verify(opts)
		}
		var unknown x509.UnknownAuthorityError
		if err != nil && o.IgnoreUnknownCA && errors.As(err, &unknown) {
			// No chain to judge: check the leaf on its own.
			err = checkLeaf(leaf, now, o)
		}
		if err != nil {
			return err
		}
		if !o.IgnoreCertCNInvalid {
			name := host
			if name == "" {
				name = cs.ServerName
			}
			if name == "" {
				return x509.HostnameError{Certificate: leaf, Host: "(unknown: an IP address reached through a proxy)"}
			}
			return leaf.VerifyHostname(name)
		}
		return nil
	}
}

// checkLeaf checks a certificate's dates and usage without a chain.
func checkLeaf(leaf *x509.Certificate, now time.Time, o ClientOptions) error {
	if !o.IgnoreCertDateInvalid && (now.Before(leaf.NotBefore) || now.After(leaf.NotAfter)) {
		return x509.CertificateInvalidError{Cert: leaf, Reason: x509.Expired}
	}
	if !o.IgnoreWrongUsage && len(leaf.ExtKeyUsage) > 0 {
		for _, u := range leaf.ExtKeyUsage {
			if u == x509.ExtKeyUsageServerAuth || u == x509.ExtKeyUsageAny {
				return nil
			}
		}
		return x509.CertificateInvalidError{Cert: leaf, Reason: x509.IncompatibleUsage}
	}
	return nil
}
