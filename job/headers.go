package job

import (
	"net/http"
	"slices"

	"github.com/ferry-dev/ferry/events"
)

// Write-only custom headers (IBackgroundCopyJobHttpOptions3::
// MakeCustomHeadersWriteOnly). Their values never enter the job model: the
// coordinator stores them in certvault first, and these commands carry the
// header names only. The job's options then list the names
// (events.JobOptions.WriteOnlyHeaders); the agent holding the lease gets
// the values from certvault just in time.
type (
	// MakeHeadersWriteOnly makes Names the job's write-only custom headers,
	// replacing any it had. Plain custom headers with one of these names
	// are dropped from the job's options (their values, if they were the
	// ones made write-only, must not stay readable). Only the owner may;
	// no names: nothing to do (S_FALSE), as BITS's method always succeeds.
	MakeHeadersWriteOnly struct {
		// Names are canonical header names (http.CanonicalHeaderKey), one
		// per write-only header line, in order (a name may repeat).
		Names           []string
		CallerPrincipal string
	}
	// ClearWriteOnlyHeaders removes the job's write-only custom headers
	// (their values are deleted from certvault by the caller). Only the
	// owner may; none set: nothing to do (S_FALSE).
	ClearWriteOnlyHeaders struct {
		CallerPrincipal string
	}
)

func (MakeHeadersWriteOnly) commandName() string  { return "make write-only the custom headers of" }
func (ClearWriteOnlyHeaders) commandName() string { return "clear the write-only custom headers of" }

// ValidateHeaderNames checks the names of write-only headers: each an HTTP
// token in canonical form, not one the transfer sets itself.
func ValidateHeaderNames(names []string) error {
	for i, n := range names {
		switch {
		case n == "" || !isToken(n):
			return Errorf(E_INVALIDARG, "write-only header name %d is not an HTTP token", i)
		case http.CanonicalHeaderKey(n) != n:
			return Errorf(E_INVALIDARG, "write-only header name %q is not in canonical form (%q)", n, http.CanonicalHeaderKey(n))
		case slices.Contains(reservedHeaders, n):
			return Errorf(E_INVALIDARG, "custom header %s is set by the transfer itself", n)
		}
	}
	return nil
}

// headerOwnerOnly refuses anyone but the job's owner, administrators
// included: BITS lets only the owner set a job's custom headers.
func headerOwnerOnly(j *Job, principal string) error {
	if principal == "" || principal != j.Owner {
		return Errorf(E_ACCESSDENIED, "only the job's owner may change its write-only custom headers")
	}
	return nil
}

func decideMakeHeadersWriteOnly(j *Job, c MakeHeadersWriteOnly) ([]events.Payload, error) {
	if err := headerOwnerOnly(j, c.CallerPrincipal); err != nil {
		return nil, err
	}
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	if len(c.Names) == 0 {
		return nil, nil
	}
	if err := ValidateHeaderNames(c.Names); err != nil {
		return nil, err
	}
	opts := cloneOptions(j.Options)
	opts.WriteOnlyHeaders = slices.Clone(c.Names)
	plain := opts.CustomHeaders[:0:0]
	for _, h := range opts.CustomHeaders {
		if !slices.Contains(c.Names, http.CanonicalHeaderKey(HeaderNames([]string{h})[0])) {
			plain = append(plain, h)
		}
	}
	opts.CustomHeaders = plain
	opts = canonicalOptions(opts)
	if OptionsEqual(opts, j.Options) {
		return nil, nil
	}
	return one(&events.JobModified{Options: &opts}), nil
}

func decideClearWriteOnlyHeaders(j *Job, c ClearWriteOnlyHeaders) ([]events.Payload, error) {
	if err := headerOwnerOnly(j, c.CallerPrincipal); err != nil {
		return nil, err
	}
	if err := notFinal(j, c); err != nil {
		return nil, err
	}
	if len(j.Options.WriteOnlyHeaders) == 0 {
		return nil, nil
	}
	opts := cloneOptions(j.Options)
	opts.WriteOnlyHeaders = nil
	opts = canonicalOptions(opts)
	return one(&events.JobModified{Options: &opts}), nil
}
