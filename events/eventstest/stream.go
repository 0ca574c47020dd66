package eventstest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ferry-dev/ferry/events"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamText is every message of the event stream (events.StreamName) as
// stored: its subject, headers and body, one after the other. Tests scan it
// for what must never be written there (secrets) and for what must.
func StreamText(t testing.TB, js jetstream.JetStream) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString(m.Subject + "\n")
		for k, vs := range m.Header {
			out.WriteString(k + ": " + strings.Join(vs, ",") + "\n")
		}
		out.Write(m.Data)
		out.WriteString("\n")
	}
	return out.String()
}
