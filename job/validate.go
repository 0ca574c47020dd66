package job

import (
	"net/url"
	"path"
	"strings"
	"unicode/utf8"

	"github.com/ferry-dev/ferry/events"
)

// ValidateFile checks one file as AddFile does: the remote name must be an
// absolute http or https URL without credentials, the local name an absolute,
// clean path. It returns an *Error with E_INVALIDARG (or
// ERROR_WINHTTP_UNRECOGNIZED_SCHEME for other schemes).
func ValidateFile(f events.FileSpec) error {
	if f.RemoteURL == "" {
		return Errorf(RPC_X_NULL_REF_POINTER, "remote_url is required")
	}
	if f.LocalName == "" {
		return Errorf(RPC_X_NULL_REF_POINTER, "local_name is required")
	}
	if err := ValidateRemoteURL(f.RemoteURL); err != nil {
		return err
	}
	return ValidateLocalName(f.LocalName)
}

// ValidateRemoteURL checks a remote name.
func ValidateRemoteURL(raw string) error {
	if len(raw) > MaxURLLength {
		return Errorf(BG_E_STRING_TOO_LONG, "remote_url is longer than %d characters", MaxURLLength)
	}
	if !utf8.ValidString(raw) || strings.ContainsAny(raw, "\x00\r\n\t ") {
		return Errorf(E_INVALIDARG, "remote_url contains invalid characters")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return &Error{Code: ERROR_WINHTTP_INVALID_URL, Detail: "remote_url is not a valid URL", Err: err}
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
	case "":
		return Errorf(ERROR_WINHTTP_INVALID_URL, "remote_url %q is not an absolute URL", raw)
	default:
		return Errorf(ERROR_WINHTTP_UNRECOGNIZED_SCHEME, "remote_url scheme %q is not supported: use http or https", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return Errorf(ERROR_WINHTTP_INVALID_URL, "remote_url %q has no host", raw)
	}
	if u.User != nil {
		// Credentials in a URL would end up in events and logs.
		return Errorf(E_INVALIDARG, "remote_url must not carry credentials (user:password@)")
	}
	return nil
}

// ValidateLocalName checks a local name: absolute, clean (no "." or ".."
// elements, no doubled or trailing slashes), no control characters.
func ValidateLocalName(p string) error {
	if len(p) > MaxLocalName {
		return Errorf(BG_E_STRING_TOO_LONG, "local_name is longer than %d characters", MaxLocalName)
	}
	if !utf8.ValidString(p) {
		return Errorf(E_INVALIDARG, "local_name is not valid UTF-8")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return Errorf(E_INVALIDARG, "local_name contains control characters")
		}
	}
	if !strings.HasPrefix(p, "/") {
		return Errorf(E_INVALIDARG, "local_name %q is a relative path: it must be absolute", p)
	}
	for _, el := range strings.Split(p[1:], "/") {
		if el == ".." {
			return Errorf(E_INVALIDARG, "local_name %q escapes its directory (\"..\")", p)
		}
	}
	if path.Clean(p) != p || p == "/" {
		return Errorf(E_INVALIDARG, "local_name %q is not a clean path to a file (it is %q when cleaned)", p, path.Clean(p))
	}
	return nil
}

// ValidateDisplayName checks a display name's length (in characters).
func ValidateDisplayName(s string) error {
	if utf8.RuneCountInString(s) > MaxDisplayName {
		return Errorf(BG_E_STRING_TOO_LONG, "display_name is longer than %d characters", MaxDisplayName)
	}
	if !utf8.ValidString(s) {
		return Errorf(E_INVALIDARG, "display_name is not valid UTF-8")
	}
	return nil
}

// ValidateDescription checks a description's length (in characters).
func ValidateDescription(s string) error {
	if utf8.RuneCountInString(s) > MaxDescription {
		return Errorf(BG_E_STRING_TOO_LONG, "description is longer than %d characters", MaxDescription)
	}
	return nil
}
