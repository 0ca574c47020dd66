package services

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/certvault"
	"github.com/ferry-dev/ferry/job"
)

// VaultLookup is the coordinator's certvault when certvault runs as a
// separate process: it implements coordinator.CertLookup with certvault's
// HTTPS store API (GET /v1/stores/{location}/{store}/certificates/{sha1}),
// called with the coordinator's own identity. The dev stack, where both
// share a process, uses *certvault.Vault directly.
//
// The coordinator asks as the job's owner sees the stores, but certvault
// identifies the coordinator, not the owner, and its API has no
// "on behalf of" lookup. So VaultLookup applies the owner's read rights
// itself (docs/certvault.md's table) and addresses the owner's own stores
// the way an admin does: CURRENT_USER "MY" of owner P is USERS "P\MY",
// CURRENT_SERVICE is SERVICES. Those addresses — and USERS, SERVICES and
// CURRENT_USER_GROUP_POLICY — need the coordinator's identity to have the
// admin role in certvault (certvault's roles.overrides); the shared
// locations LOCAL_MACHINE, LOCAL_MACHINE_GROUP_POLICY and
// LOCAL_MACHINE_ENTERPRISE need nothing. Lookup by subject name
// (SetClientCertificateByName) needs the certificates themselves, which the
// store API does not return: VaultLookup answers E_NOTIMPL, and
// VaultClient, which the coordinator uses, adds it (and write-only
// headers) through certvault's coordinator API.
type VaultLookup struct {
	// URL is certvault's base URL ("https://certvault:7071").
	URL    string
	Client *http.Client
}

// NewVaultLookup is a VaultLookup that presents tlsCfg's identity.
func NewVaultLookup(url string, tlsCfg *tls.Config) *VaultLookup {
	return &VaultLookup{
		URL: strings.TrimSuffix(url, "/"),
		Client: &http.Client{Timeout: 15 * time.Second,
			Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 4},
			// certvault never redirects: a redirect would carry a request
			// (header values included) elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }},
	}
}

// Lookup finds the certificate sum in the store (loc, store) as owner may
// read it, and answers with the location and store as owner named them.
func (v *VaultLookup) Lookup(ctx context.Context, owner certvault.Caller, loc certvault.Location, store string, sum [20]byte) (certvault.CertInfo, error) {
	qloc, qstore, err := ownerAddress(owner, loc, store)
	if err != nil {
		return certvault.CertInfo{}, err
	}
	var info certvault.CertInfo
	path := storePath(qloc.String(), qstore) + "/" + hex.EncodeToString(sum[:])
	if err := v.get(ctx, path, &info); err != nil {
		if needsAdmin(loc) {
			// The owner's right was checked above: a refusal is the
			// coordinator's.
			err = v.coordinatorDenied(err, loc)
		}
		return certvault.CertInfo{}, err
	}
	// Answer as the owner addressed the store ("MY", not "<owner>\MY").
	info.Location = loc
	if qloc != loc {
		if i := strings.LastIndexByte(info.Store, '\\'); i >= 0 {
			info.Store = info.Store[i+1:]
		}
	}
	return info, nil
}

// LookupBySubject is SetClientCertificateByName, which the store API
// cannot answer: VaultClient.LookupBySubject does, through certvault's
// coordinator API.
func (v *VaultLookup) LookupBySubject(ctx context.Context, owner certvault.Caller, loc certvault.Location, store, subject string) (certvault.CertInfo, error) {
	if _, _, err := ownerAddress(owner, loc, store); err != nil {
		return certvault.CertInfo{}, err
	}
	return certvault.CertInfo{}, job.Errorf(job.E_NOTIMPL,
		"naming a client certificate by subject needs certvault's coordinator API (services.VaultClient): name it by its thumbprint")
}

// needsAdmin reports whether the coordinator must be an admin in certvault
// to read loc's stores for an owner.
func needsAdmin(loc certvault.Location) bool {
	switch loc {
	case certvault.LocalMachine, certvault.LocalMachineGroupPolicy, certvault.LocalMachineEnterprise:
		return false
	}
	return true
}

func (v *VaultLookup) coordinatorDenied(err error, loc certvault.Location) error {
	if job.CodeOf(err) != job.E_ACCESSDENIED {
		return err
	}
	return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: err,
		Detail: fmt.Sprintf("certvault at %s did not let the coordinator read %s stores for the job's owner: give the coordinator's identity the admin role in certvault's roles.overrides (docs/operations.md)", v.URL, loc)}
}

// ownerAddress applies owner's read rights to (loc, name) — certvault's
// rules for reading — and returns the address an admin uses for the same
// store. The name is checked first, as certvault does.
func ownerAddress(owner certvault.Caller, loc certvault.Location, name string) (certvault.Location, string, error) {
	if !loc.Valid() {
		return 0, "", job.Errorf(job.E_NOTIMPL, "store location %d is not a BG_CERT_STORE_LOCATION value (0..7)", loc)
	}
	if loc == certvault.Users || loc == certvault.Services {
		i := strings.LastIndexByte(name, '\\')
		if i < 0 {
			return 0, "", job.Errorf(job.E_INVALIDARG, `a %s store is named "<principal>\<store>", as in "spiffe://example.org/user/alice\MY"`, loc)
		}
		if _, err := certvault.ValidateStoreName(name[i+1:]); err != nil {
			return 0, "", err
		}
	} else {
		var err error
		if name, err = certvault.ValidateStoreName(name); err != nil {
			return 0, "", err
		}
	}
	switch owner.Role {
	case certvault.RoleAdmin, certvault.RoleUser, certvault.RoleAgent, certvault.RoleService:
	default:
		return 0, "", job.Errorf(job.E_ACCESSDENIED, "the caller has no certvault role")
	}
	if owner.Principal == "" {
		return 0, "", job.Errorf(job.E_ACCESSDENIED, "the caller has no usable principal")
	}
	deny := func(why string) (certvault.Location, string, error) {
		return 0, "", job.Errorf(job.E_ACCESSDENIED, "%s may not read stores in %s: %s", owner.Role, loc, why)
	}
	switch loc {
	case certvault.CurrentUser:
		return certvault.Users, owner.Principal + `\` + name, nil
	case certvault.CurrentService:
		if owner.Role != certvault.RoleService {
			return deny("CURRENT_SERVICE holds the stores of the calling service identity")
		}
		return certvault.Services, owner.Principal + `\` + name, nil
	case certvault.Users, certvault.Services:
		if owner.Role != certvault.RoleAdmin {
			return deny("it addresses other principals' stores and is for admins")
		}
	case certvault.CurrentUserGroupPolicy:
		if owner.Role != certvault.RoleUser && owner.Role != certvault.RoleAdmin {
			return deny("it holds policy for users")
		}
	}
	return loc, name, nil
}

// get reads a certvault resource; a refusal is the *job.Error of its
// problem document, certvault unreachable is ERROR_SERVICE_UNAVAILABLE.
func (v *VaultLookup) get(ctx context.Context, path string, out any) error {
	return v.call(ctx, http.MethodGet, path, nil, out, "check the certificate")
}

// call sends a request to certvault (body: JSON, or nil) and decodes its
// answer into out. A refusal is the *job.Error of its problem document
// (code and detail as certvault gave them); certvault unreachable, or an
// answer that is not one, is ERROR_SERVICE_UNAVAILABLE, whose detail says
// what the call was for (what). Errors never hold the request body.
func (v *VaultLookup) call(ctx context.Context, method, path string, body []byte, out any, what string) error {
	if len(v.URL) < len("https://") || !strings.EqualFold(v.URL[:len("https://")], "https://") {
		// Never send an owner's name, let alone header values, in the clear.
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE,
			Detail: fmt.Sprintf("certvault_url %q is not an https:// URL", v.URL)}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, v.URL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := v.Client.Do(req)
	if err != nil {
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: err,
			Detail: "certvault cannot be reached to " + what + "; try again later"}
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: err, Detail: "certvault's answer was cut short; try again later"}
	}
	if resp.StatusCode >= 300 {
		var p certvault.Problem
		if json.Unmarshal(answer, &p) == nil {
			if c, ok := job.LookupCode(p.Code); ok {
				return &job.Error{Code: c, Detail: p.Detail}
			}
		}
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: errors.New(resp.Status),
			Detail: fmt.Sprintf("certvault answered %s", resp.Status)}
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return &job.Error{Code: job.ERROR_SERVICE_UNAVAILABLE, Err: err, Detail: "certvault's answer cannot be decoded"}
	}
	return nil
}
