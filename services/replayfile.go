package services

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/ferry-dev/ferry/coordinator"
	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/job/history"
)

// OpenExport opens an export file for reading; "-" is standard input.
func OpenExport(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// ReadJobEvents reads an event export (NDJSON, see history.EncodeLine) and
// returns the events of one job in file order, with the sequences they had
// in the exporting installation. id is a job ID or a unique prefix of one
// among the file's jobs. Every line must decode (older event versions are
// upcast), not only the job's: a file with a bad line is refused with the
// line's number.
func ReadJobEvents(r io.Reader, id string) (string, []events.Event, error) {
	x := history.NewExportReader(r)
	byJob := map[string][]events.Event{}
	for {
		ev, _, err := x.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", nil, err
		}
		if ev.Kind == events.KindJob && strings.HasPrefix(ev.AggregateID, id) {
			byJob[ev.AggregateID] = append(byJob[ev.AggregateID], ev)
		}
	}
	if evs, ok := byJob[id]; ok {
		return id, evs, nil
	}
	switch len(byJob) {
	case 0:
		return "", nil, job.Errorf(job.BG_E_NOT_FOUND, "job %s is not in the export", id)
	case 1:
		for full, evs := range byJob {
			return full, evs, nil
		}
	}
	ids := make([]string, 0, len(byJob))
	for full := range byJob {
		ids = append(ids, full)
	}
	sort.Strings(ids)
	return "", nil, fmt.Errorf("job id prefix %q is ambiguous in the export: %s", id, strings.Join(ids, ", "))
}

// ReplayJobFile replays job id (or a unique prefix) from the export file at
// path ("-": standard input) to point p, with no server: the state and
// timeline GET /v1/jobs/{id}/history would answer on the installation that
// made the export.
func ReplayJobFile(path, id string, p history.Point) (coordinator.HistoryResponse, error) {
	f, err := OpenExport(path)
	if err != nil {
		return coordinator.HistoryResponse{}, err
	}
	defer f.Close()
	_, evs, err := ReadJobEvents(f, id)
	if err != nil {
		return coordinator.HistoryResponse{}, fmt.Errorf("%s: %w", path, err)
	}
	return history.Build(evs, p)
}
