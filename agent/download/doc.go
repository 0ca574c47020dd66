// Package download owns the agent's transfer of one remote file over HTTP or
// HTTPS into a staged temporary file, with resume.
//
// Fetch streams the body into Request.TempName under the agent's root
// (os.Root, so nothing is ever written outside it), hashing with SHA-256 as it
// writes. Next to the temporary file lives a small JSON sidecar
// (TempName+".state") that records how many bytes of the temporary file are
// durable, the marshalled SHA-256 state after exactly those bytes, and the
// server's validators. The invariant the package keeps is:
//
//	the first sidecar.Offset bytes of the temporary file are fsynced, belong
//	to the resource identified by the sidecar's validators, and hash to the
//	sidecar's SHA-256 state.
//
// So a later Fetch (after a crash, a transient error or a Cancel of the
// context) truncates the file to that offset, restores the hash and asks for
// the rest with Range/If-Range, without reading the prefix again. When the
// sidecar says Complete, Fetch returns the Result without touching the
// network, which makes "staged, but the event was never written" idempotent.
//
// A Fetch holds an exclusive lock (flock) on its temporary file from open to
// return, and one that finds it locked waits: on storage shared by several
// agents, a job's previous holder may still be writing the file it lost
// (paused past its lease, it finds out at its next event), and the new
// holder must not truncate, write or claim bytes beside it.
//
// Beyond a whole file, a Request can ask for byte ranges concatenated in
// order (BITS AddFileWithRanges), a SHA-256 to validate the result against,
// dynamic content (never resumed), a maximum size, a bandwidth Limiter
// (CombineLimiters joins an agent's and a priority class's) and a free-space
// reserve; Result carries the file's response headers and, under
// RedirectAllowReport, the final URL. ClientOptions add BITS's proxy usage,
// redirect policy and security flags (each ignore flag drops one kind of
// certificate failure; verification itself always runs). Package
// origintest is a fault-injecting origin for tests of all this.
//
// Errors are *Failure values in ferry's BITS vocabulary (job.Code, error
// context, transient or fatal, Retry-After). The caller (the agent worker)
// turns hooks and results into job events; this package emits none itself.
//
// NewClient builds the *http.Client Fetch expects: no transparent gzip,
// dial-time refusal of link-local and cloud metadata addresses, refusal of
// HTTPS→HTTP redirects, and stall detection on the response body.
//
// Client certificates are chosen per transfer through the request's context
// (WithClientCertificate, or WithAnonymousClientAuth to send none), read in
// the TLS callback, which runs only when the origin asks. With neither, an
// origin that asks fails the transfer with ErrClientCertNeeded, reported as
// ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED before any HTTP exchange, as BITS
// does even when the origin's client authentication is optional. Servers'
// refusals of a certificate (TLS alerts, nginx's HTTP 400 pages) become
// client-authentication errors carrying the server's words. A client's
// connection pool is shared by all its requests, so the agent uses one
// client per transfer.
//
// The package imports only job (for the error vocabulary), the standard
// library, zerolog and golang.org/x/sys/unix (free space on Linux, file
// locks on Unix).
package download
