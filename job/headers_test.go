package job

import (
	"slices"
	"strings"
	"testing"

	"github.com/ferry-dev/ferry/events"
)

// withHeaders is a job in state s whose options have the plain custom
// headers plain and the write-only header names wo.
func withHeaders(t *testing.T, s State, plain, wo []string) Job {
	t.Helper()
	j := inState(t, s)
	opts := cloneOptions(j.Options)
	opts.CustomHeaders, opts.WriteOnlyHeaders = plain, wo
	opts = canonicalOptions(opts)
	if err := Apply(&j, &events.JobModified{Options: &opts}, t0); err != nil {
		t.Fatal(err)
	}
	return j
}

// TestWriteOnlyHeadersDecide: MakeHeadersWriteOnly and
// ClearWriteOnlyHeaders, rule by rule, and what TakeOwnership and a later
// plain SetCustomHeaders do to them.
func TestWriteOnlyHeadersDecide(t *testing.T) {
	plain := []string{"Authorization: Bearer s3cret", "X-Trace: 1"}
	type want struct {
		plain, wo []string
	}
	cases := []struct {
		name string
		job  func(*testing.T) Job
		cmd  Command
		want string // event types
		code Code
		opts *want // the options after the events
	}{
		{name: "owner moves the plain headers", job: func(t *testing.T) Job { return withHeaders(t, Suspended, plain, nil) },
			cmd:  MakeHeadersWriteOnly{Names: []string{"Authorization", "X-Trace"}, CallerPrincipal: "alice"},
			want: events.TypeJobModified, opts: &want{nil, []string{"Authorization", "X-Trace"}}},
		{name: "owner makes one name write-only, the other plain header stays", job: func(t *testing.T) Job { return withHeaders(t, Queued, plain, nil) },
			cmd:  MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "alice"},
			want: events.TypeJobModified, opts: &want{[]string{"X-Trace: 1"}, []string{"Authorization"}}},
		{name: "given headers while transferring", job: func(t *testing.T) Job { return inState(t, Transferring) },
			cmd:  MakeHeadersWriteOnly{Names: []string{"X-Api-Key"}, CallerPrincipal: "alice"},
			want: events.TypeJobModified, opts: &want{nil, []string{"X-Api-Key"}}},
		{name: "a repeated name", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd:  MakeHeadersWriteOnly{Names: []string{"Cookie", "Cookie"}, CallerPrincipal: "alice"},
			want: events.TypeJobModified, opts: &want{nil, []string{"Cookie", "Cookie"}}},
		{name: "replaces the write-only set", job: func(t *testing.T) Job { return withHeaders(t, Suspended, nil, []string{"X-Old"}) },
			cmd:  MakeHeadersWriteOnly{Names: []string{"X-New"}, CallerPrincipal: "alice"},
			want: events.TypeJobModified, opts: &want{nil, []string{"X-New"}}},
		{name: "the same names again change nothing", job: func(t *testing.T) Job { return withHeaders(t, Suspended, nil, []string{"X-Api-Key"}) },
			cmd: MakeHeadersWriteOnly{Names: []string{"X-Api-Key"}, CallerPrincipal: "alice"}},
		{name: "no names: nothing to do", job: func(t *testing.T) Job { return withHeaders(t, Suspended, nil, []string{"X-Api-Key"}) },
			cmd: MakeHeadersWriteOnly{CallerPrincipal: "alice"}},
		{name: "in ERROR", job: func(t *testing.T) Job { return inState(t, Errored) },
			cmd: MakeHeadersWriteOnly{Names: []string{"X-Api-Key"}, CallerPrincipal: "alice"}, want: events.TypeJobModified},
		{name: "another user", job: func(t *testing.T) Job { return withHeaders(t, Suspended, plain, nil) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "bob"}, code: E_ACCESSDENIED},
		{name: "an administrator is not the owner", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "root"}, code: E_ACCESSDENIED},
		{name: "nobody", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}}, code: E_ACCESSDENIED},
		{name: "cancelled", job: func(t *testing.T) Job { return inState(t, Cancelled) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},
		{name: "acknowledged", job: func(t *testing.T) Job { return inState(t, Acknowledged) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},
		{name: "access before state", job: func(t *testing.T) Job { return inState(t, Cancelled) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization"}, CallerPrincipal: "bob"}, code: E_ACCESSDENIED},
		{name: "state before an empty list", job: func(t *testing.T) Job { return inState(t, Acknowledged) },
			cmd: MakeHeadersWriteOnly{CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},
		{name: "a name that is not a token", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"X Api"}, CallerPrincipal: "alice"}, code: E_INVALIDARG},
		{name: "a name that carries a value", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Authorization: Bearer x"}, CallerPrincipal: "alice"}, code: E_INVALIDARG},
		{name: "a name not in canonical form", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"x-api-key"}, CallerPrincipal: "alice"}, code: E_INVALIDARG},
		{name: "a name the transfer sets", job: func(t *testing.T) Job { return inState(t, Suspended) },
			cmd: MakeHeadersWriteOnly{Names: []string{"Range"}, CallerPrincipal: "alice"}, code: E_INVALIDARG},

		{name: "owner clears", job: func(t *testing.T) Job {
			return withHeaders(t, Transferring, []string{"X-Trace: 1"}, []string{"Authorization"})
		},
			cmd: ClearWriteOnlyHeaders{CallerPrincipal: "alice"}, want: events.TypeJobModified, opts: &want{[]string{"X-Trace: 1"}, nil}},
		{name: "clear with none set", job: func(t *testing.T) Job { return withHeaders(t, Suspended, plain, nil) },
			cmd: ClearWriteOnlyHeaders{CallerPrincipal: "alice"}},
		{name: "clear by another user", job: func(t *testing.T) Job { return withHeaders(t, Suspended, nil, []string{"Authorization"}) },
			cmd: ClearWriteOnlyHeaders{CallerPrincipal: "root"}, code: E_ACCESSDENIED},
		{name: "clear when cancelled", job: func(t *testing.T) Job { return withHeaders(t, Cancelled, nil, []string{"Authorization"}) },
			cmd: ClearWriteOnlyHeaders{CallerPrincipal: "alice"}, code: BG_E_INVALID_STATE},

		{name: "plain headers set later leave the write-only ones", job: func(t *testing.T) Job { return withHeaders(t, Suspended, nil, []string{"Authorization"}) },
			cmd:  Modify{Options: &OptionsPatch{CustomHeaders: &[]string{"x-trace: 2"}}},
			want: events.TypeJobModified, opts: &want{[]string{"X-Trace: 2"}, []string{"Authorization"}}},
		{name: "take ownership drops them", job: func(t *testing.T) Job { return withHeaders(t, Suspended, plain, []string{"X-Api-Key"}) },
			cmd:  TakeOwnership{NewOwner: "root"},
			want: events.TypeJobOwnerChanged + "," + events.TypeJobModified, opts: &want{nil, nil}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			j := tc.job(t)
			before := j.Clone()
			ps, err := Decide(&j, tc.cmd, t0)
			if tc.code != (Code{}) {
				if CodeOf(err) != tc.code || len(ps) != 0 {
					t.Fatalf("got %v %v, want %s", types(ps), err, tc.code.Symbol)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := types(ps); got != tc.want {
				t.Fatalf("events %q, want %q", got, tc.want)
			}
			for _, p := range ps {
				if m, ok := p.(*events.JobModified); ok && m.Options != nil {
					// The event never carries a value that was made write-only.
					for _, h := range m.Options.CustomHeaders {
						if slices.Contains(m.Options.WriteOnlyHeaders, HeaderNames([]string{h})[0]) {
							t.Errorf("the event keeps the plain header %q of a write-only name", h)
						}
					}
				}
				if err := Apply(&j, p, t0); err != nil {
					t.Fatal(err)
				}
			}
			if tc.opts != nil {
				if !slices.Equal(j.Options.CustomHeaders, tc.opts.plain) || !slices.Equal(j.Options.WriteOnlyHeaders, tc.opts.wo) {
					t.Fatalf("custom headers %q, write-only %q; want %q, %q", j.Options.CustomHeaders, j.Options.WriteOnlyHeaders, tc.opts.plain, tc.opts.wo)
				}
			}
			// The other options are untouched.
			a, b := j.Options, before.Options
			a.CustomHeaders, a.WriteOnlyHeaders, b.CustomHeaders, b.WriteOnlyHeaders = nil, nil, nil, nil
			if _, isTake := tc.cmd.(TakeOwnership); !isTake && !OptionsEqual(a, b) {
				t.Errorf("other options changed: %+v → %+v", b, a)
			}
		})
	}
}

func TestValidateHeaderNames(t *testing.T) {
	if err := ValidateHeaderNames([]string{"Authorization", "X-Api-Key", "Cookie"}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{{""}, {"X:Y"}, {"x-lower"}, {"Host"}, {"Transfer-Encoding"}, {"A\nB"}, {"Ok", strings.Repeat("é", 2)}} {
		if err := ValidateHeaderNames(bad); CodeOf(err) != E_INVALIDARG {
			t.Errorf("%q: %v, want E_INVALIDARG", bad, err)
		}
	}
}
