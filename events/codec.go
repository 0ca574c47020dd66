package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sort"
)

// ErrUnknownType is wrapped when an event's type or version is not registered.
var ErrUnknownType = errors.New("unknown event type or version")

// Upcaster turns the data of version v into the data of version v+1. It is
// pure and deterministic, and it describes both shapes with types of its own
// (never the current payload type): once a version v+2 exists, the upcaster
// from v must still produce v+1, which the next upcaster takes from there.
// Information version v did not record gets the value the newer version
// documents as "not recorded"; an upcaster never invents it.
type Upcaster func(json.RawMessage) (json.RawMessage, error)

type typeInfo struct {
	current   int
	newFn     func() Payload
	upcasters map[int]Upcaster // from version -> to version+1
}

var registry = map[string]*typeInfo{}

// register records the current version of a payload type. It is called from
// init functions of this package only, so the registry is read-only after
// package initialisation and needs no lock.
func register(newFn func() Payload) {
	p := newFn()
	if reflect.TypeOf(p).Kind() != reflect.Pointer {
		panic("events: register a pointer payload: " + p.EventType())
	}
	t, ok := registry[p.EventType()]
	if !ok {
		t = &typeInfo{upcasters: map[int]Upcaster{}}
		registry[p.EventType()] = t
	}
	t.current, t.newFn = p.EventVersion(), newFn
}

// registerUpcaster records how data of (typ, from) becomes (typ, from+1).
func registerUpcaster(typ string, from int, u Upcaster) {
	t, ok := registry[typ]
	if !ok {
		t = &typeInfo{upcasters: map[int]Upcaster{}}
		registry[typ] = t
	}
	t.upcasters[from] = u
}

// Types lists every registered event type with its current version, sorted by
// name. Documentation and golden-file tests use it.
func Types() map[string]int {
	out := make(map[string]int, len(registry))
	for name, t := range registry {
		out[name] = t.current
	}
	return out
}

// TypeNames returns the registered type names in sorted order.
func TypeNames() []string {
	names := make([]string, 0, len(registry))
	for n := range registry {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Upcast returns data of event type typ at version upcast to the type's
// current version, by the registered upcasters one version at a time, and
// that version. Data already at the current version is returned as is.
// Tools that rewrite or export events in the current schema use it; Payload
// does the same before it decodes.
func Upcast(typ string, version int, data json.RawMessage) (json.RawMessage, int, error) {
	t, err := lookup(typ, version)
	if err != nil {
		return nil, 0, err
	}
	data, err = t.upcast(typ, version, data)
	if err != nil {
		return nil, 0, err
	}
	return data, t.current, nil
}

func lookup(typ string, version int) (*typeInfo, error) {
	t, ok := registry[typ]
	if !ok || t.newFn == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownType, typ)
	}
	if version > t.current || version < 1 {
		return nil, fmt.Errorf("%w: %q v%d (current v%d)", ErrUnknownType, typ, version, t.current)
	}
	return t, nil
}

func (t *typeInfo) upcast(typ string, version int, data json.RawMessage) (json.RawMessage, error) {
	for v := version; v < t.current; v++ {
		up, ok := t.upcasters[v]
		if !ok {
			return nil, fmt.Errorf("%w: no upcaster for %q v%d", ErrUnknownType, typ, v)
		}
		var err error
		if data, err = up(data); err != nil {
			return nil, fmt.Errorf("upcast %q v%d: %w", typ, v, err)
		}
	}
	return data, nil
}

func decodePayload(typ string, version int, data json.RawMessage) (Payload, error) {
	t, err := lookup(typ, version)
	if err != nil {
		return nil, err
	}
	if data, err = t.upcast(typ, version, data); err != nil {
		return nil, err
	}
	p := t.newFn()
	// json.Unmarshal, not a json.Decoder: data is one value already cut out
	// of the envelope, and a Decoder would copy it into a buffer of its own
	// first (two allocations per event on the replay path).
	if err := json.Unmarshal(data, p); err != nil {
		return nil, err
	}
	return p, nil
}
