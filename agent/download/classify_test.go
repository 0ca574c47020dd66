package download

import (
	"errors"
	"io"
	"io/fs"
	"net/netip"
	"syscall"
	"testing"

	"github.com/ferry-dev/ferry/job"
)

func TestBlockedAddr(t *testing.T) {
	for _, tc := range []struct {
		addr    string
		blocked bool
	}{
		{"169.254.169.254", true},
		{"169.254.0.1", true},
		{"fe80::1", true},
		{"fe80::1%eth0", true},
		{"::ffff:169.254.169.254", true},
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 form of 169.254.169.254
		{"fd00:ec2::254", true},
		{"100.100.100.200", true},
		{"168.63.129.16", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"10.0.0.1", false},
		{"192.168.1.1", false},
		{"172.16.0.1", false},
		{"fd00::1", false},
		{"100.100.100.201", false},
		{"8.8.8.8", false},
		{"2001:db8::1", false},
	} {
		if got := blockedAddr(netip.MustParseAddr(tc.addr)); got != tc.blocked {
			t.Errorf("blockedAddr(%s) = %v, want %v", tc.addr, got, tc.blocked)
		}
	}
}

func TestClassifyLocal(t *testing.T) {
	pe := func(errno syscall.Errno) error { return &fs.PathError{Op: "write", Path: "dl/x.part", Err: errno} }
	for _, tc := range []struct {
		err       error
		want      job.Code
		transient bool
	}{
		{pe(syscall.ENOSPC), job.ERROR_DISK_FULL, true},
		{pe(syscall.EDQUOT), job.ERROR_DISK_FULL, true},
		{pe(syscall.EACCES), job.E_ACCESSDENIED, false},
		{pe(syscall.EPERM), job.E_ACCESSDENIED, false},
		{pe(syscall.EROFS), job.E_ACCESSDENIED, false},
		{pe(syscall.EIO), job.E_FAIL, false},
		{errors.New("something else"), job.E_FAIL, false},
	} {
		f := classifyLocal(tc.err, "write the temporary file")
		if f.Code != tc.want || f.Transient != tc.transient || f.Context != job.ContextLocalFile || !errors.Is(f, tc.err) {
			t.Errorf("%v: got %+v", tc.err, f)
		}
	}
}

func TestClassifyNetFallbacks(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want job.Code
	}{
		{io.ErrUnexpectedEOF, job.ERROR_WINHTTP_CONNECTION_ERROR},
		{syscall.ECONNRESET, job.ERROR_WINHTTP_CONNECTION_ERROR},
		{&stallError{}, job.ERROR_WINHTTP_TIMEOUT},
		{errors.New("tls: handshake failure"), job.ERROR_WINHTTP_SECURE_FAILURE},
		{errors.New("http2: stream closed"), job.ERROR_WINHTTP_CONNECTION_ERROR},
	} {
		if f := classifyNet(tc.err); f.Code != tc.want {
			t.Errorf("%v: got %+v", tc.err, f)
		}
	}
}
