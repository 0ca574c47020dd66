package notify_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/ferry-dev/ferry/coordinator/notify"
)

// A webhook receiver checks the signature over the exact body before it
// trusts anything in it, then de-duplicates on the event ID.
func ExampleVerifySignature() {
	secret := []byte("the secret the notifier is configured with")

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		err = notify.VerifySignature(secret, r.Header.Get(notify.HeaderSignature), body, time.Now(), 5*time.Minute)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var n notify.Notification
		if err := json.Unmarshal(body, &n); err != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		// A real receiver skips n.ID if it has seen it, and orders a job's
		// notifications by n.Seq.
		fmt.Printf("job %s: %s (seq %d), now %s\n", n.JobID, n.Flag, n.Seq, n.State)
		w.WriteHeader(http.StatusNoContent) // any 2xx acknowledges
	})

	// What the notifier sends:
	body := `{"id":"0190f3c4-0000-7000-8000-000000000001","seq":42,"type":"JobTransferred","flag":"JOB_TRANSFERRED","job_id":"j1","state":"TRANSFERRED","time":"2026-11-22T02:07:54Z","job":{"id":"j1","display_name":"nightly","state":"TRANSFERRED","priority":"NORMAL","progress":{"bytes_total":100,"bytes_transferred":100,"files_total":1,"files_transferred":1}}}`
	for _, b := range []string{body, strings.Replace(body, `"seq":42`, `"seq":43`, 1)} {
		req := httptest.NewRequest(http.MethodPost, "/hook", strings.NewReader(b))
		req.Header.Set(notify.HeaderSignature, notify.Sign(secret, time.Now(), []byte(body)))
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		fmt.Println(strings.TrimSpace(fmt.Sprint(rec.Code, " ", rec.Body.String())))
	}
	// Output:
	// job j1: JOB_TRANSFERRED (seq 42), now TRANSFERRED
	// 204
	// 401 notify: Ferry-Signature does not match
}
