package download

import (
	"context"
	"errors"
	"io"
	"testing"
	"testing/synctest"
	"time"
)

// TestStallReaderVirtualTime checks the stall watchdog in virtual time: the
// caller's own pauses between reads never count, a read that waits longer
// than the idle timeout fails with a timeout and aborts the request.
func TestStallReaderVirtualTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pr, pw := io.Pipe()
		ctx, cancel := context.WithCancelCause(context.Background())
		abort := func(cause error) { cancel(cause); pw.CloseWithError(cause) } // what the transport does to a body
		s := &stallReader{rc: pr, idle: time.Minute, cancel: abort}
		s.timer = time.AfterFunc(time.Hour, s.fire)
		s.timer.Stop()
		defer s.Close()

		go func() {
			pw.Write([]byte("first"))
			time.Sleep(59 * time.Second) // slow, but within the idle timeout
			pw.Write([]byte("second"))
		}()
		buf := make([]byte, 16)
		if n, err := s.Read(buf); err != nil || string(buf[:n]) != "first" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		time.Sleep(10 * time.Minute) // the caller is busy (fsync, hooks): not a stall
		if n, err := s.Read(buf); err != nil || string(buf[:n]) != "second" {
			t.Fatalf("read %q, %v", buf[:n], err)
		}
		start := time.Now()
		_, err := s.Read(buf) // nothing more comes
		var se *stallError
		if !errors.As(err, &se) || !se.Timeout() {
			t.Fatalf("err %v, want a stall", err)
		}
		if waited := time.Since(start); waited != time.Minute {
			t.Errorf("stall detected after %v, want 1m", waited)
		}
		if !errors.As(context.Cause(ctx), &se) {
			t.Errorf("request context not cancelled with the stall: %v", context.Cause(ctx))
		}
	})
}
