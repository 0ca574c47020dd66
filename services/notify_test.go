package services_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/coordinator/notify"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// webhook is an HTTPS receiver of notifications.
type webhook struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []notify.Notification
	sig []string
	raw [][]byte
}

func newWebhook(t *testing.T, ca *servicestest.CA) *webhook {
	w := &webhook{}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var n notify.Notification
		if err := json.Unmarshal(body, &n); err != nil {
			http.Error(rw, err.Error(), 400)
			return
		}
		w.mu.Lock()
		w.got, w.sig, w.raw = append(w.got, n), append(w.sig, r.Header.Get(notify.HeaderSignature)), append(w.raw, body)
		w.mu.Unlock()
	}))
	w.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1", x509.ExtKeyUsageServerAuth)}}
	w.srv.StartTLS()
	t.Cleanup(w.srv.Close)
	return w
}

func (w *webhook) flags(jobID string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, n := range w.got {
		if n.JobID == jobID {
			out = append(out, n.Flag)
		}
	}
	return out
}

// TestNotificationsEndToEnd: a job asking for JOB_TRANSFERRED and
// FILE_TRANSFERRED notifications gets them, signed with the installation's
// secret, at its HTTPS webhook; a job with DISABLE and one without
// settings get none; nothing secret is in a notification.
func TestNotificationsEndToEnd(t *testing.T) {
	ca := servicestest.NewCA(t, "webhooks")
	hook := newWebhook(t, ca)
	o := servicestest.NewOrigin(t)
	s := startStack(t, o.CAFile, ca.File)
	s.origin = o
	ctx := context.Background()
	url := hook.srv.URL + "/hook"

	mk := func(name string, n *events.NotifySettings) string {
		req := coordinator.CreateRequest{DisplayName: name, Resume: true,
			Files: []events.FileSpec{
				{RemoteURL: o.URL(64 << 10), LocalName: s.dest(name + "-1.bin")},
				{RemoteURL: o.URL(32 << 10), LocalName: s.dest(name + "-2.bin")},
			},
			Options: &job.OptionsPatch{CustomHeaders: &[]string{"X-Secret-Token: hunter2-" + name}}}
		if n != nil {
			req.Options.Notify = n
		}
		j, err := s.client.Create(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return j.ID
	}
	wanted := mk("wanted", &events.NotifySettings{URL: url, Flags: []string{"JOB_TRANSFERRED", "FILE_TRANSFERRED"}})
	disabled := mk("disabled", &events.NotifySettings{URL: url, Flags: []string{"JOB_TRANSFERRED", "DISABLE"}})
	silent := mk("silent", nil)
	for _, id := range []string{wanted, disabled, silent} {
		s.until(id, "TRANSFERRED", state(job.Transferred))
	}
	want := []string{"FILE_TRANSFERRED", "FILE_TRANSFERRED", "JOB_TRANSFERRED"}
	deadline := time.Now().Add(30 * time.Second)
	for !slices.Equal(hook.flags(wanted), want) {
		if time.Now().After(deadline) {
			t.Fatalf("notifications for the job: %v, want %v", hook.flags(wanted), want)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not timing
	}
	// Wait until the notifier has acknowledged every event in the log:
	// then nothing more is coming for the other jobs.
	info, err := s.dev.NATS().JS.Stream(ctx, "FERRY_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	si, err := info.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons, err := s.dev.NATS().JS.Consumer(ctx, "FERRY_EVENTS", "ferry_notify")
	if err != nil {
		t.Fatal(err)
	}
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ci.AckFloor.Stream >= si.State.LastSeq && ci.NumAckPending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("notifier ack floor %d, log at %d", ci.AckFloor.Stream, si.State.LastSeq)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition, not timing
	}
	if f := hook.flags(disabled); len(f) != 0 {
		t.Fatalf("a job with DISABLE was notified: %v", f)
	}
	if f := hook.flags(silent); len(f) != 0 {
		t.Fatalf("a job without notify settings was notified: %v", f)
	}

	secret, err := os.ReadFile(filepath.Join(s.dev.Info().DataDir, services.NotifySecretFile))
	if err != nil {
		t.Fatal(err)
	}
	hook.mu.Lock()
	defer hook.mu.Unlock()
	for i, raw := range hook.raw {
		if err := notify.VerifySignature([]byte(strings.TrimSpace(string(secret))), hook.sig[i], raw, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("notification %d: signature: %v", i, err)
		}
		if strings.Contains(string(raw), "hunter2") {
			t.Errorf("notification %d carries a custom header value: %s", i, raw)
		}
	}
	last := hook.got[len(hook.got)-1]
	if last.State != job.Transferred || last.Job.Progress.FilesTransferred != 2 {
		t.Fatalf("last notification: %+v", last)
	}
}
