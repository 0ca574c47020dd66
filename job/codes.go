package job

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is one entry of ferry's error vocabulary: a BITS (or COM, Win32,
// WinHTTP) symbol with its HRESULT, the HTTP status the API answers with, and
// a user-facing message. The table below is the only place codes are defined;
// every layer (job model, agent, HTTP API, CLI) speaks in these.
type Code struct {
	Symbol  string
	HResult uint32
	Status  int // HTTP status when returned by an API
	Message string
}

// HResultString formats the HRESULT as the API shows it: "0x80200002".
func (c Code) HResultString() string { return fmt.Sprintf("0x%08X", c.HResult) }

// Success reports whether the HRESULT is a success code (S_OK, S_FALSE,
// BG_S_*).
func (c Code) Success() bool { return c.HResult&0x80000000 == 0 }

func (c Code) String() string { return c.Symbol + " (" + c.HResultString() + ")" }

// The vocabulary. Values are those of the Windows SDK headers (bitsmsg.h,
// winerror.h, winhttp.h).
var (
	S_OK                          = Code{"S_OK", 0x00000000, http.StatusOK, "The operation succeeded."}
	S_FALSE                       = Code{"S_FALSE", 0x00000001, http.StatusOK, "The operation succeeded but had nothing to do."}
	BG_S_PARTIAL_COMPLETE         = Code{"BG_S_PARTIAL_COMPLETE", 0x00200017, http.StatusOK, "Only the files that finished transferring were kept; the others were deleted."}
	BG_S_UNABLE_TO_DELETE_FILES   = Code{"BG_S_UNABLE_TO_DELETE_FILES", 0x0020001A, http.StatusOK, "Unable to delete all temporary files of the job."}
	E_ACCESSDENIED                = Code{"E_ACCESSDENIED", 0x80070005, http.StatusForbidden, "Access is denied."}
	E_NOTIMPL                     = Code{"E_NOTIMPL", 0x80004001, http.StatusBadRequest, "The value is not supported."}
	E_INVALIDARG                  = Code{"E_INVALIDARG", 0x80070057, http.StatusBadRequest, "One or more arguments are invalid."}
	E_FAIL                        = Code{"E_FAIL", 0x80004005, http.StatusInternalServerError, "Unspecified failure."}
	E_UNEXPECTED                  = Code{"E_UNEXPECTED", 0x8000FFFF, http.StatusInternalServerError, "Catastrophic failure."}
	E_UNAUTHENTICATED             = Code{"E_UNAUTHENTICATED", 0x80090350, http.StatusUnauthorized, "A verified client certificate is required."} // SEC_E_LOGON_DENIED
	ERROR_FILE_NOT_FOUND          = Code{"ERROR_FILE_NOT_FOUND", 0x80070002, http.StatusNotFound, "The system cannot find the file specified."}
	ERROR_PATH_NOT_FOUND          = Code{"ERROR_PATH_NOT_FOUND", 0x80070003, http.StatusNotFound, "The system cannot find the path specified."}
	ERROR_DISK_FULL               = Code{"ERROR_DISK_FULL", 0x80070070, http.StatusInsufficientStorage, "There is not enough space on the disk."}
	ERROR_NOT_FOUND               = Code{"ERROR_NOT_FOUND", 0x80070490, http.StatusNotFound, "Element not found."}
	ERROR_SERVICE_UNAVAILABLE     = Code{"ERROR_SERVICE_UNAVAILABLE", 0x80070426, http.StatusServiceUnavailable, "The service is temporarily unavailable; try again."} // ERROR_SERVICE_NOT_ACTIVE
	CRYPT_E_NOT_FOUND             = Code{"CRYPT_E_NOT_FOUND", 0x80092004, http.StatusNotFound, "Cannot find object or property."}
	RPC_X_NULL_REF_POINTER        = Code{"RPC_X_NULL_REF_POINTER", 0x800706F4, http.StatusBadRequest, "A required value is missing."}
	RPC_X_BAD_STUB_DATA           = Code{"RPC_X_BAD_STUB_DATA", 0x800706F7, http.StatusBadRequest, "The data is not in the expected form."}
	BG_E_NOT_FOUND                = Code{"BG_E_NOT_FOUND", 0x80200001, http.StatusNotFound, "The requested job was not found."}
	BG_E_INVALID_STATE            = Code{"BG_E_INVALID_STATE", 0x80200002, http.StatusConflict, "The requested action is not allowed in the current job state."}
	BG_E_EMPTY                    = Code{"BG_E_EMPTY", 0x80200003, http.StatusConflict, "The job must contain one or more files before you can resume it."}
	BG_E_FILE_NOT_AVAILABLE       = Code{"BG_E_FILE_NOT_AVAILABLE", 0x80200004, http.StatusNotFound, "File information is not available."}
	BG_E_DESTINATION_LOCKED       = Code{"BG_E_DESTINATION_LOCKED", 0x8020000D, http.StatusConflict, "The destination volume is locked."}
	BG_E_NETWORK_DISCONNECTED     = Code{"BG_E_NETWORK_DISCONNECTED", 0x80200010, http.StatusServiceUnavailable, "The network is disconnected."}
	BG_E_MISSING_FILE_SIZE        = Code{"BG_E_MISSING_FILE_SIZE", 0x80200011, http.StatusBadGateway, "The server did not return the file size."}
	BG_E_INSUFFICIENT_RANGE       = Code{"BG_E_INSUFFICIENT_RANGE_SUPPORT", 0x80200013, http.StatusBadGateway, "The server does not support the Content-Range header."}
	BG_E_NEW_OWNER_DIFF_MAPPING   = Code{"BG_E_NEW_OWNER_DIFF_MAPPING", 0x80200015, http.StatusConflict, "The new owner maps the destination differently."}
	BG_E_NEW_OWNER_NO_FILE_ACCESS = Code{"BG_E_NEW_OWNER_NO_FILE_ACCESS", 0x80200016, http.StatusForbidden, "The new owner cannot access the job's files."}
	BG_E_INVALID_SERVER_RESPONSE  = Code{"BG_E_INVALID_SERVER_RESPONSE", 0x8020001B, http.StatusBadGateway, "The server's response was not valid."}
	BG_E_TOO_MANY_FILES           = Code{"BG_E_TOO_MANY_FILES", 0x8020001C, http.StatusBadRequest, "Upload jobs can only contain one file."}
	BG_E_LOCAL_FILE_CHANGED       = Code{"BG_E_LOCAL_FILE_CHANGED", 0x8020001D, http.StatusConflict, "The local file changed during the transfer."}
	BG_E_STRING_TOO_LONG          = Code{"BG_E_STRING_TOO_LONG", 0x80200021, http.StatusBadRequest, "The string is too long."}
	BG_E_INVALID_AUTH_TARGET      = Code{"BG_E_INVALID_AUTH_TARGET", 0x80200027, http.StatusBadRequest, "The authentication target is not valid."}
	BG_E_INVALID_AUTH_SCHEME      = Code{"BG_E_INVALID_AUTH_SCHEME", 0x80200028, http.StatusBadRequest, "The authentication scheme is not valid."}
	BG_E_INVALID_RANGE            = Code{"BG_E_INVALID_RANGE", 0x8020002B, http.StatusBadRequest, "The file range is not valid."}
	BG_E_OVERLAPPING_RANGES       = Code{"BG_E_OVERLAPPING_RANGES", 0x8020002C, http.StatusBadRequest, "The file ranges overlap."}
	BG_E_BLOCKED_BY_POLICY        = Code{"BG_E_BLOCKED_BY_POLICY", 0x8020003E, http.StatusForbidden, "The transfer is blocked by policy."}
	BG_E_TOO_MANY_JOBS_PER_USER   = Code{"BG_E_TOO_MANY_JOBS_PER_USER", 0x80200049, http.StatusTooManyRequests, "The user has too many jobs."}
	BG_E_TOO_MANY_JOBS_PER_MACH   = Code{"BG_E_TOO_MANY_JOBS_PER_MACHINE", 0x80200050, http.StatusTooManyRequests, "The installation has too many jobs."}
	BG_E_TOO_MANY_FILES_IN_JOB    = Code{"BG_E_TOO_MANY_FILES_IN_JOB", 0x80200051, http.StatusBadRequest, "The job has too many files."}
	BG_E_TOO_MANY_RANGES_IN_FILE  = Code{"BG_E_TOO_MANY_RANGES_IN_FILE", 0x80200052, http.StatusBadRequest, "The file has too many ranges."}
	BG_E_VALIDATION_FAILED        = Code{"BG_E_VALIDATION_FAILED", 0x80200053, http.StatusUnprocessableEntity, "The file content failed validation."}
	BG_E_MAXDOWNLOAD_TIMEOUT      = Code{"BG_E_MAXDOWNLOAD_TIMEOUT", 0x80200054, http.StatusGatewayTimeout, "The job did not finish within its maximum download time."}
	BG_E_INSUFFICIENT_HTTP        = Code{"BG_E_INSUFFICIENT_HTTP_SUPPORT", 0x80200012, http.StatusBadGateway, "The server does not support HTTP 1.1."}
	BG_E_PROXY_LIST_TOO_LARGE     = Code{"BG_E_PROXY_LIST_TOO_LARGE", 0x80200018, http.StatusBadRequest, "The HTTP proxy list is too long."}
	BG_E_PROXY_BYPASS_TOO_LARGE   = Code{"BG_E_PROXY_BYPASS_LIST_TOO_LARGE", 0x80200019, http.StatusBadRequest, "The HTTP proxy bypass list is too long."}
	BG_E_TOO_LARGE                = Code{"BG_E_TOO_LARGE", 0x80200020, http.StatusUnprocessableEntity, "The file is larger than the job allows."}
	BG_E_READ_ONLY_AFTER_ADDFILE  = Code{"BG_E_READ_ONLY_PROPERTY_AFTER_ADDFILE", 0x80200061, http.StatusConflict, "The property cannot be changed after files were added to the job."}
	BG_E_READ_ONLY_AFTER_RESUME   = Code{"BG_E_READ_ONLY_PROPERTY_AFTER_RESUME", 0x80200062, http.StatusConflict, "The property cannot be changed after the job was first resumed."}
	BG_E_RANDOM_ACCESS_NOT_SUPP   = Code{"BG_E_RANDOM_ACCESS_NOT_SUPPORTED", 0x8020006D, http.StatusBadRequest, "Ranges are not supported for this job."}
	BG_E_REMOTE_FILE_CHANGED      = Code{"BG_E_REMOTE_FILE_CHANGED", 0x80200073, http.StatusConflict, "The remote file changed during the transfer."}

	// WinHTTP errors (HRESULT_FROM_WIN32 of the 12xxx codes).
	ERROR_WINHTTP_TIMEOUT               = Code{"ERROR_WINHTTP_TIMEOUT", 0x80072EE2, http.StatusGatewayTimeout, "The operation timed out."}
	ERROR_WINHTTP_INVALID_URL           = Code{"ERROR_WINHTTP_INVALID_URL", 0x80072EE5, http.StatusBadRequest, "The URL is invalid."}
	ERROR_WINHTTP_UNRECOGNIZED_SCHEME   = Code{"ERROR_WINHTTP_UNRECOGNIZED_SCHEME", 0x80072EE6, http.StatusBadRequest, "The URL scheme is not http or https."}
	ERROR_WINHTTP_NAME_NOT_RESOLVED     = Code{"ERROR_WINHTTP_NAME_NOT_RESOLVED", 0x80072EE7, http.StatusBadGateway, "The server name could not be resolved."}
	ERROR_WINHTTP_CANNOT_CONNECT        = Code{"ERROR_WINHTTP_CANNOT_CONNECT", 0x80072EFD, http.StatusBadGateway, "A connection to the server could not be established."}
	ERROR_WINHTTP_CONNECTION_ERROR      = Code{"ERROR_WINHTTP_CONNECTION_ERROR", 0x80072EFE, http.StatusBadGateway, "The connection to the server was reset or terminated."}
	ERROR_WINHTTP_SECURE_CERT_DATE      = Code{"ERROR_WINHTTP_SECURE_CERT_DATE_INVALID", 0x80072F05, http.StatusBadGateway, "The server's certificate has expired or is not yet valid."}
	ERROR_WINHTTP_SECURE_CERT_CN        = Code{"ERROR_WINHTTP_SECURE_CERT_CN_INVALID", 0x80072F06, http.StatusBadGateway, "The server's certificate does not match the host name."}
	ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED = Code{"ERROR_WINHTTP_CLIENT_AUTH_CERT_NEEDED", 0x80072F0C, http.StatusBadGateway, "The server requests client authentication and the job has no client certificate."}
	ERROR_WINHTTP_SECURE_INVALID_CA     = Code{"ERROR_WINHTTP_SECURE_INVALID_CA", 0x80072F0D, http.StatusBadGateway, "The server's certificate is signed by an unknown authority."}
	ERROR_WINHTTP_INVALID_SERVER_RESP   = Code{"ERROR_WINHTTP_INVALID_SERVER_RESPONSE", 0x80072F78, http.StatusBadGateway, "The server's response could not be parsed."}
	ERROR_WINHTTP_REDIRECT_FAILED       = Code{"ERROR_WINHTTP_REDIRECT_FAILED", 0x80072F7A, http.StatusBadGateway, "The redirect failed (a scheme change or a loop)."}
	ERROR_WINHTTP_SECURE_FAILURE        = Code{"ERROR_WINHTTP_SECURE_FAILURE", 0x80072F8F, http.StatusBadGateway, "The secure connection to the server failed."}

	// Certificate verdicts (HttpReceiveClientCertificate's CertFlags).
	CERT_E_EXPIRED       = Code{"CERT_E_EXPIRED", 0x800B0101, http.StatusUnauthorized, "The certificate has expired or is not yet valid."}
	CERT_E_UNTRUSTEDROOT = Code{"CERT_E_UNTRUSTEDROOT", 0x800B0109, http.StatusUnauthorized, "The certificate chains to an untrusted root."}
	CERT_E_REVOKED       = Code{"CERT_E_REVOKED", 0x800B010C, http.StatusUnauthorized, "The certificate was revoked."}
	CERT_E_CN_NO_MATCH   = Code{"CERT_E_CN_NO_MATCH", 0x800B010F, http.StatusUnauthorized, "The certificate's name does not match."}
	CERT_E_WRONG_USAGE   = Code{"CERT_E_WRONG_USAGE", 0x800B0110, http.StatusUnauthorized, "The certificate is not valid for the requested usage."}
	CERT_E_UNTRUSTEDCA   = Code{"CERT_E_UNTRUSTEDCA", 0x800B0112, http.StatusUnauthorized, "The certificate's issuer is not trusted."}
)

// HTTPStatusCode returns BG_E_HTTP_ERROR_<status> (0x80190000 + status), the
// code BITS reports for an HTTP error response.
func HTTPStatusCode(status int) Code {
	return Code{
		Symbol:  fmt.Sprintf("BG_E_HTTP_ERROR_%d", status),
		HResult: 0x80190000 | uint32(status&0xFFFF),
		Status:  http.StatusBadGateway,
		Message: fmt.Sprintf("The server answered HTTP %d %s.", status, http.StatusText(status)),
	}
}

var codeTable = func() map[string]Code {
	m := map[string]Code{}
	for _, c := range allCodes {
		if _, dup := m[c.Symbol]; dup {
			panic("job: duplicate code " + c.Symbol)
		}
		m[c.Symbol] = c
	}
	return m
}()

var allCodes = []Code{
	S_OK, S_FALSE, BG_S_PARTIAL_COMPLETE, BG_S_UNABLE_TO_DELETE_FILES,
	E_ACCESSDENIED, E_NOTIMPL, E_INVALIDARG, E_FAIL, E_UNEXPECTED, E_UNAUTHENTICATED,
	ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, ERROR_DISK_FULL, ERROR_NOT_FOUND, ERROR_SERVICE_UNAVAILABLE,
	CRYPT_E_NOT_FOUND, RPC_X_NULL_REF_POINTER, RPC_X_BAD_STUB_DATA,
	BG_E_NOT_FOUND, BG_E_INVALID_STATE, BG_E_EMPTY, BG_E_FILE_NOT_AVAILABLE, BG_E_DESTINATION_LOCKED,
	BG_E_NETWORK_DISCONNECTED, BG_E_MISSING_FILE_SIZE, BG_E_INSUFFICIENT_RANGE,
	BG_E_NEW_OWNER_DIFF_MAPPING, BG_E_NEW_OWNER_NO_FILE_ACCESS, BG_E_INVALID_SERVER_RESPONSE,
	BG_E_TOO_MANY_FILES, BG_E_LOCAL_FILE_CHANGED, BG_E_STRING_TOO_LONG, BG_E_INVALID_AUTH_TARGET,
	BG_E_INVALID_AUTH_SCHEME, BG_E_INVALID_RANGE, BG_E_OVERLAPPING_RANGES, BG_E_BLOCKED_BY_POLICY,
	BG_E_TOO_MANY_JOBS_PER_USER, BG_E_TOO_MANY_JOBS_PER_MACH, BG_E_TOO_MANY_FILES_IN_JOB,
	BG_E_TOO_MANY_RANGES_IN_FILE, BG_E_VALIDATION_FAILED, BG_E_MAXDOWNLOAD_TIMEOUT,
	BG_E_INSUFFICIENT_HTTP, BG_E_PROXY_LIST_TOO_LARGE, BG_E_PROXY_BYPASS_TOO_LARGE, BG_E_TOO_LARGE,
	BG_E_READ_ONLY_AFTER_ADDFILE, BG_E_READ_ONLY_AFTER_RESUME, BG_E_RANDOM_ACCESS_NOT_SUPP, BG_E_REMOTE_FILE_CHANGED,
	ERROR_WINHTTP_TIMEOUT, ERROR_WINHTTP_INVALID_URL, ERROR_WINHTTP_UNRECOGNIZED_SCHEME,
	ERROR_WINHTTP_NAME_NOT_RESOLVED, ERROR_WINHTTP_CANNOT_CONNECT, ERROR_WINHTTP_CONNECTION_ERROR,
	ERROR_WINHTTP_SECURE_CERT_DATE, ERROR_WINHTTP_SECURE_CERT_CN, ERROR_WINHTTP_CLIENT_AUTH_CERT_NEED,
	ERROR_WINHTTP_SECURE_INVALID_CA, ERROR_WINHTTP_INVALID_SERVER_RESP, ERROR_WINHTTP_REDIRECT_FAILED,
	ERROR_WINHTTP_SECURE_FAILURE,
	CERT_E_EXPIRED, CERT_E_UNTRUSTEDROOT, CERT_E_REVOKED, CERT_E_CN_NO_MATCH, CERT_E_WRONG_USAGE, CERT_E_UNTRUSTEDCA,
}

// Codes returns every code of the vocabulary (HTTP status codes excluded).
func Codes() []Code { return append([]Code(nil), allCodes...) }

// LookupCode finds a code by symbol, including BG_E_HTTP_ERROR_<nnn>.
func LookupCode(symbol string) (Code, bool) {
	if c, ok := codeTable[symbol]; ok {
		return c, true
	}
	var status int
	if n, _ := fmt.Sscanf(symbol, "BG_E_HTTP_ERROR_%d", &status); n == 1 && status >= 100 && status <= 599 {
		if c := HTTPStatusCode(status); c.Symbol == symbol {
			return c, true
		}
	}
	return Code{}, false
}

// Error is an error that carries a code of the vocabulary. Detail is the
// user-facing explanation (safe to show to the caller); Err is the internal
// cause, logged but not shown.
type Error struct {
	Code   Code
	Detail string
	Err    error
}

func (e *Error) Error() string {
	msg := e.Code.Symbol
	if e.Detail != "" {
		msg += ": " + e.Detail
	} else {
		msg += ": " + e.Code.Message
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Errorf makes an *Error with a formatted user-facing detail.
func Errorf(c Code, format string, args ...any) *Error {
	return &Error{Code: c, Detail: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code carried by err, or E_FAIL when it carries none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return E_FAIL
}

// Error contexts (BG_ERROR_CONTEXT_*): where a job error happened.
const (
	ContextNone                   = "BG_ERROR_CONTEXT_NONE"
	ContextUnknown                = "BG_ERROR_CONTEXT_UNKNOWN"
	ContextGeneralQueueManager    = "BG_ERROR_CONTEXT_GENERAL_QUEUE_MANAGER"
	ContextQueueManagerNotify     = "BG_ERROR_CONTEXT_QUEUE_MANAGER_NOTIFICATION"
	ContextLocalFile              = "BG_ERROR_CONTEXT_LOCAL_FILE"
	ContextRemoteFile             = "BG_ERROR_CONTEXT_REMOTE_FILE"
	ContextGeneralTransport       = "BG_ERROR_CONTEXT_GENERAL_TRANSPORT"
	ContextRemoteApplication      = "BG_ERROR_CONTEXT_REMOTE_APPLICATION"
	ContextServerCertificateCheck = "BG_ERROR_CONTEXT_SERVER_CERTIFICATE_CALLBACK"
)
