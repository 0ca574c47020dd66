package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"

	"github.com/ferry-dev/ferry/events"
)

var ignorePayload = cmpopts.IgnoreUnexported(events.Event{})

var testMeta = events.Meta{
	Time:          time.Date(2025, 6, 1, 12, 0, 0, 5, time.FixedZone("CEST", 2*3600)),
	Actor:         "spiffe://ferry.test/user/alice",
	CausationID:   "req-1",
	CorrelationID: "corr-1",
}

// fill sets every exported field of v to a non-zero value, so a round trip
// shows any field the codec drops.
func fill(v reflect.Value, n int) {
	switch v.Kind() {
	case reflect.String:
		v.SetString(fmt.Sprintf("s%d", n))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(n))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Map:
		v.Set(reflect.MakeMapWithSize(v.Type(), 2))
		for i := range 2 {
			k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
			fill(k, n+i+1)
			fill(e, n+i+1)
			v.SetMapIndex(k, e)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			fill(v.Index(i), n+i+1)
		}
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2025, 1, 2, 3, 4, 5, n, time.UTC)))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n+i+1)
			}
		}
	default:
		panic("fill: unsupported kind " + v.Kind().String())
	}
}

func TestTypesAndTypeNames(t *testing.T) {
	types, names := events.Types(), events.TypeNames()
	if len(types) == 0 || len(types) != len(names) || !slices.IsSorted(names) {
		t.Fatalf("Types %v, TypeNames %v", types, names)
	}
	for _, n := range names {
		if types[n] < 1 {
			t.Errorf("%s: current version %d", n, types[n])
		}
	}
}

// TestRoundTripEveryType encodes a fully filled payload of every registered
// type and version in an envelope and decodes it back.
func TestRoundTripEveryType(t *testing.T) {
	types := events.Types()
	for _, name := range events.TypeNames() {
		t.Run(name, func(t *testing.T) {
			p := events.NewPayload(name)
			if p.EventType() != name || p.EventVersion() != types[name] {
				t.Fatalf("payload says %s v%d, registry %s v%d", p.EventType(), p.EventVersion(), name, types[name])
			}
			fill(reflect.ValueOf(p).Elem(), 1)
			ev, err := events.New(events.KindJob, "job-1", testMeta, p)
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
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if diff := cmp.Diff(ev, got, ignorePayload); diff != "" {
				t.Fatalf("envelope (-want +got):\n%s", diff)
			}
			if !got.Time.Equal(testMeta.Time) || got.Time.Location() != time.UTC {
				t.Errorf("time %v, want %v in UTC", got.Time, testMeta.Time)
			}
			gp, err := got.Payload()
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(p, gp); diff != "" {
				t.Fatalf("payload (-want +got):\n%s", diff)
			}
			if again, _ := got.Payload(); again != gp {
				t.Error("Payload is not cached")
			}
		})
	}
}

func TestUnmarshalRejects(t *testing.T) {
	valid := func(edit func(m map[string]any)) []byte {
		m := map[string]any{
			"id": uuid.NewString(), "type": events.TypeJobQueued, "v": 1,
			"kind": "job", "aggregate_id": "j1", "time": time.Now(), "data": map[string]any{},
		}
		edit(m)
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for name, b := range map[string][]byte{
		"not json":       []byte("{"),
		"array":          []byte("[]"),
		"no id":          valid(func(m map[string]any) { delete(m, "id") }),
		"bad id":         valid(func(m map[string]any) { m["id"] = "nope" }),
		"no type":        valid(func(m map[string]any) { delete(m, "type") }),
		"version 0":      valid(func(m map[string]any) { m["v"] = 0 }),
		"kind with dot":  valid(func(m map[string]any) { m["kind"] = "job.x" }),
		"wildcard id":    valid(func(m map[string]any) { m["aggregate_id"] = ">" }),
		"empty id":       valid(func(m map[string]any) { m["aggregate_id"] = "" }),
		"long id":        valid(func(m map[string]any) { m["aggregate_id"] = strings.Repeat("a", 129) }),
		"no data":        valid(func(m map[string]any) { delete(m, "data") }),
		"string version": valid(func(m map[string]any) { m["v"] = "1" }),
	} {
		if _, err := events.Unmarshal(b); err == nil {
			t.Errorf("%s: %s accepted", name, b)
		}
	}
	if _, err := events.Unmarshal(valid(func(map[string]any) {})); err != nil {
		t.Fatalf("the valid envelope: %v", err)
	}
}

func TestPayloadUnknownTypeOrVersion(t *testing.T) {
	for name, ev := range map[string]events.Event{
		"unknown type": {Type: "NoSuchEvent", Version: 1, Data: json.RawMessage(`{}`)},
		"future":       {Type: events.TypeJobCreated, Version: 2, Data: json.RawMessage(`{}`)},
		"version 0":    {Type: events.TypeJobCreated, Version: 0, Data: json.RawMessage(`{}`)},
	} {
		if _, err := ev.Payload(); !errors.Is(err, events.ErrUnknownType) {
			t.Errorf("%s: %v, want ErrUnknownType", name, err)
		}
	}
	bad := events.Event{Type: events.TypeJobQueued, Version: 1, Data: json.RawMessage(`{"reason":1}`)}
	if _, err := bad.Payload(); err == nil || errors.Is(err, events.ErrUnknownType) {
		t.Errorf("ill-typed data: %v", err)
	}
}

// testRenamedV3 is a test-only type at version 3: v1 had "name", v2 renamed
// it to "full_name", v3 added "source".
type testRenamedV3 struct {
	FullName string `json:"full_name"`
	Source   string `json:"source"`
}

func (*testRenamedV3) EventType() string { return "TestRenamed" }
func (*testRenamedV3) EventVersion() int { return 3 }

func TestUpcasting(t *testing.T) {
	v1to2 := func(in json.RawMessage) (json.RawMessage, error) {
		var v1 struct {
			Name string `json:"name"`
		}
		if err := json.Unmarshal(in, &v1); err != nil {
			return nil, err
		}
		if v1.Name == "fail" {
			return nil, errors.New("cannot upcast")
		}
		return json.Marshal(map[string]string{"full_name": v1.Name})
	}
	v2to3 := func(in json.RawMessage) (json.RawMessage, error) {
		var m map[string]any
		if err := json.Unmarshal(in, &m); err != nil {
			return nil, err
		}
		m["source"] = "upcast"
		return json.Marshal(m)
	}
	remove := events.RegisterForTest(func() events.Payload { return new(testRenamedV3) },
		map[int]func(json.RawMessage) (json.RawMessage, error){1: v1to2, 2: v2to3})
	defer remove()

	for _, c := range []struct {
		v    int
		data string
		want testRenamedV3
	}{
		{1, `{"name":"ada"}`, testRenamedV3{FullName: "ada", Source: "upcast"}},
		{2, `{"full_name":"ada"}`, testRenamedV3{FullName: "ada", Source: "upcast"}},
		{3, `{"full_name":"ada","source":"new"}`, testRenamedV3{FullName: "ada", Source: "new"}},
	} {
		ev := events.Event{Type: "TestRenamed", Version: c.v, Data: json.RawMessage(c.data)}
		p, err := ev.Payload()
		if err != nil {
			t.Fatalf("v%d: %v", c.v, err)
		}
		if got := *p.(*testRenamedV3); got != c.want {
			t.Errorf("v%d: got %+v, want %+v", c.v, got, c.want)
		}
	}
	ev := events.Event{Type: "TestRenamed", Version: 1, Data: json.RawMessage(`{"name":"fail"}`)}
	if _, err := ev.Payload(); err == nil || !strings.Contains(err.Error(), "cannot upcast") {
		t.Errorf("failing upcaster: %v", err)
	}
	ev = events.Event{Type: "TestRenamed", Version: 4, Data: json.RawMessage(`{}`)}
	if _, err := ev.Payload(); !errors.Is(err, events.ErrUnknownType) {
		t.Errorf("v4: %v", err)
	}
}

func TestUpcastingGap(t *testing.T) {
	// v3 is current but nobody wrote the v1→v2 upcaster.
	remove := events.RegisterForTest(func() events.Payload { return new(testRenamedV3) },
		map[int]func(json.RawMessage) (json.RawMessage, error){2: func(b json.RawMessage) (json.RawMessage, error) { return b, nil }})
	defer remove()
	ev := events.Event{Type: "TestRenamed", Version: 1, Data: json.RawMessage(`{}`)}
	if _, err := ev.Payload(); !errors.Is(err, events.ErrUnknownType) {
		t.Errorf("missing upcaster: %v", err)
	}
}

// FuzzUnmarshal feeds stored bodies to the decoder. It must never panic, and
// whatever it accepts must encode again and decode to the same event, stably.
func FuzzUnmarshal(f *testing.F) {
	for _, name := range events.TypeNames() {
		p := events.NewPayload(name)
		fill(reflect.ValueOf(p).Elem(), 1)
		ev, err := events.New(events.KindJob, "job-1", testMeta, p)
		if err != nil {
			f.Fatal(err)
		}
		ev.ID = uuid.Must(uuid.NewV7())
		b, err := events.Marshal(&ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"id":"0197a0b0-0000-7000-8000-000000000000","type":"JobQueued","v":1,"kind":"job","aggregate_id":"a","time":"2025-01-01T00:00:00+14:00","data":{ "reason" : "<x>" }}`))
	f.Add([]byte(`{"id":"0197a0b0-0000-7000-8000-000000000000","type":"X","v":7,"kind":"k","aggregate_id":"a","time":"0001-01-01T00:00:00Z","data":null}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{}`))
	// Every recorded event, old versions included.
	golden, _ := filepath.Glob(filepath.Join(goldenDir, "events", "*.json"))
	for _, name := range golden {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := events.Unmarshal(b)
		if err != nil {
			return
		}
		p, perr := ev.Payload()

		b2, err := events.Marshal(&ev)
		if err != nil {
			t.Fatalf("accepted event does not encode: %v\n%s", err, b)
		}
		ev2, err := events.Unmarshal(b2)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v\n%s", err, b2)
		}
		// Encoding compacts the raw data (and escapes HTML); all else is
		// kept exactly.
		var want bytes.Buffer
		if err := json.Compact(&want, ev.Data); err != nil {
			t.Fatal(err)
		}
		var wantEsc bytes.Buffer
		json.HTMLEscape(&wantEsc, want.Bytes())
		if !bytes.Equal(wantEsc.Bytes(), ev2.Data) {
			t.Fatalf("data %s became %s", ev.Data, ev2.Data)
		}
		ev.Data = ev2.Data
		if diff := cmp.Diff(ev, ev2, ignorePayload); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
		b3, err := events.Marshal(&ev2)
		if err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("encoding is not stable: %v\n%s\n%s", err, b2, b3)
		}
		p2, perr2 := ev2.Payload()
		if (perr == nil) != (perr2 == nil) {
			t.Fatalf("payload decodes %v before and %v after a round trip", perr, perr2)
		}
		if perr == nil {
			if diff := cmp.Diff(p, p2); diff != "" {
				t.Fatalf("payload (-first +second):\n%s", diff)
			}
		}
	})
}
