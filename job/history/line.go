package history

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/ferry-dev/ferry/events"
)

// An event export is NDJSON: one line per event, in the exporting
// installation's stream order. Each line is the stored envelope (exactly the
// members docs/events.md lists, at the version it was written in) with two
// more members first: "seq", the event's stream sequence there, and
// "subject", its subject:
//
//	{"seq":42,"subject":"ferry.evt.job.<id>","id":"…","type":"JobQueued","v":1,…,"data":{…}}
//
// Importing keeps the IDs and the order of each subject's events; the
// importing installation gives them sequences of its own.

// MaxLineBytes bounds one line of an export: far more than any event
// (JetStream's default message limit is 1 MiB).
const MaxLineBytes = 8 << 20

// EncodeLine returns ev as one export line, without the newline. ev.Seq
// must be its stream sequence.
func EncodeLine(ev *events.Event) ([]byte, error) {
	if ev.Seq == 0 {
		return nil, fmt.Errorf("history: event %s has no stream sequence", ev.ID)
	}
	body, err := events.Marshal(ev)
	if err != nil {
		return nil, err
	}
	subj, err := json.Marshal(ev.Subject())
	if err != nil {
		return nil, err
	}
	// The envelope is a JSON object: put seq and subject before its first
	// member.
	out := make([]byte, 0, len(body)+len(subj)+32)
	out = fmt.Appendf(out, `{"seq":%d,"subject":%s,`, ev.Seq, subj)
	return append(out, body[1:]...), nil
}

// ErrBadLine is wrapped by every error about the content of an export line.
var ErrBadLine = errors.New("bad export line")

// DecodeLine decodes one export line: the envelope must be well formed, its
// payload must decode at its version (older versions are upcast, as
// events.Event.Payload does), the sequence must be positive and the subject
// must be the envelope's. The returned event has Seq set to the line's
// sequence.
func DecodeLine(b []byte) (events.Event, error) {
	b = bytes.TrimSpace(b)
	var head struct {
		Seq     *uint64 `json:"seq"`
		Subject *string `json:"subject"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return events.Event{}, fmt.Errorf("%w: not a JSON object with seq and subject: %v", ErrBadLine, err)
	}
	switch {
	case head.Seq == nil || *head.Seq == 0:
		return events.Event{}, fmt.Errorf("%w: missing or zero \"seq\"", ErrBadLine)
	case head.Subject == nil:
		return events.Event{}, fmt.Errorf("%w: missing \"subject\"", ErrBadLine)
	}
	ev, err := events.Unmarshal(b)
	if err != nil {
		return events.Event{}, fmt.Errorf("%w: %v", ErrBadLine, err)
	}
	if s := ev.Subject(); s != *head.Subject {
		return events.Event{}, fmt.Errorf("%w: subject %q, but the event (%s %s) belongs to %s", ErrBadLine, *head.Subject, ev.Kind, ev.AggregateID, s)
	}
	if _, err := ev.Payload(); err != nil {
		return events.Event{}, fmt.Errorf("%w: %v", ErrBadLine, err)
	}
	ev.Seq = *head.Seq
	return ev, nil
}

// LineError is an error about one line of an export.
type LineError struct {
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// ExportReader reads an export line by line. Blank lines are skipped.
type ExportReader struct {
	br   *bufio.Reader
	line int
	buf  []byte
}

// NewExportReader reads the export in r.
func NewExportReader(r io.Reader) *ExportReader {
	return &ExportReader{br: bufio.NewReaderSize(r, 64<<10)}
}

// Line is the number of the line Next read last.
func (x *ExportReader) Line() int { return x.line }

// Next returns the next event and its line number, io.EOF after the last.
// A line that does not decode is a *LineError wrapping ErrBadLine; an error
// of the underlying reader is returned as it is.
func (x *ExportReader) Next() (events.Event, int, error) {
	for {
		b, err := x.readLine()
		if err != nil {
			return events.Event{}, x.line, err
		}
		if len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		ev, err := DecodeLine(b)
		if err != nil {
			return events.Event{}, x.line, &LineError{Line: x.line, Err: err}
		}
		return ev, x.line, nil
	}
}

// readLine returns the next line without its newline; io.EOF when there is
// none. A last line without a newline counts.
func (x *ExportReader) readLine() ([]byte, error) {
	x.buf = x.buf[:0]
	for {
		chunk, err := x.br.ReadSlice('\n')
		if len(x.buf)+len(chunk) > MaxLineBytes+1 {
			x.line++
			return nil, &LineError{Line: x.line, Err: fmt.Errorf("%w: longer than %d bytes", ErrBadLine, MaxLineBytes)}
		}
		x.buf = append(x.buf, chunk...)
		switch {
		case err == nil:
			x.line++
			return x.buf[:len(x.buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if len(x.buf) == 0 {
				return nil, io.EOF
			}
			x.line++
			return x.buf, nil
		default:
			return nil, err
		}
	}
}
