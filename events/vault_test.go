package events_test

import (
	"reflect"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
)

// TestWriteOnlyHeaderEventsRoundTrip: every field of the write-only header
// audit events survives the codec, on the subject VaultHeadersID names.
func TestWriteOnlyHeaderEventsRoundTrip(t *testing.T) {
	id := events.VaultHeadersID("0198a4c2-7a1e-7c3d-9f00-0123456789ab")
	if !events.ValidID(id) || id != "headers-0198a4c2-7a1e-7c3d-9f00-0123456789ab" {
		t.Fatalf("VaultHeadersID = %q", id)
	}
	for _, p := range []events.Payload{
		&events.WriteOnlyHeadersStored{}, &events.WriteOnlyHeadersDeleted{},
		&events.WriteOnlyHeadersReleased{}, &events.WriteOnlyHeadersReleaseDenied{},
	} {
		t.Run(p.EventType(), func(t *testing.T) {
			fill(reflect.ValueOf(p).Elem(), 1)
			ev, err := events.New(events.KindVault, id, testMeta, p)
			if err != nil {
				t.Fatal(err)
			}
			ev.ID = uuid.Must(uuid.NewV7())
			b, err := events.Marshal(&ev)
			if err != nil {
				t.Fatal(err)
			}
			got, err := events.Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if got.Subject() != "ferry.evt.vault."+id {
				t.Errorf("subject %s", got.Subject())
			}
			gp, err := got.Payload()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(p, gp); diff != "" {
				t.Fatalf("payload (-want +got):\n%s", diff)
			}
		})
	}
}
