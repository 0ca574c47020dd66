package services_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ferry-dev/ferry/events"
	"github.com/ferry-dev/ferry/job"
	"github.com/ferry-dev/ferry/services/servicestest"
)

// TestCompleteRenameFailureThenCancel: Complete renames files in order; when
// one rename fails the job stays TRANSFERRED with the error and the event
// names the files already renamed. Complete can be retried once the cause
// is gone; Cancel instead deletes the temporary files and the renamed ones.
func TestCompleteRenameFailureThenCancel(t *testing.T) {
	for _, then := range []string{"retry", "cancel"} {
		t.Run(then, func(t *testing.T) {
			s := newStack(t)
			first, second := s.dest("r/first.bin"), s.dest("r/second.bin")
			id := s.create(
				events.FileSpec{RemoteURL: s.origin.URL(256 << 10), LocalName: first},
				events.FileSpec{RemoteURL: s.origin.URL(128 << 10), LocalName: second},
			)
			s.until(id, "TRANSFERRED", state(job.Transferred))
			// A non-empty directory where the second file goes: its rename fails.
			if err := os.MkdirAll(filepath.Join(filepath.FromSlash(second), "occupied"), 0o755); err != nil {
				t.Fatal(err)
			}
			s.action(id, "complete")
			j := s.until(id, "the complete to fail", func(j *job.Job) bool { return !j.PendingComplete && j.Error != nil })
			if j.State != job.Transferred || j.Error.Context != job.ContextLocalFile || j.Error.FileIndex != 1 {
				t.Fatalf("after the failed rename: %s %+v", j.State, j.Error)
			}
			if !j.Files[0].Renamed || j.Files[1].Renamed || j.Files[0].Completed {
				t.Fatalf("renamed flags: %+v", j.Files)
			}
			if got := servicestest.FileSum(t, first); got != servicestest.Sum(256<<10) {
				t.Fatal("the first file was not renamed intact")
			}
			if err := os.RemoveAll(filepath.FromSlash(second)); err != nil {
				t.Fatal(err)
			}
			switch then {
			case "retry":
				s.action(id, "complete")
				j = s.until(id, "ACKNOWLEDGED", state(job.Acknowledged))
				if !j.Files[0].Completed || !j.Files[1].Completed {
					t.Fatalf("files: %+v", j.Files)
				}
				if servicestest.FileSum(t, first) != servicestest.Sum(256<<10) || servicestest.FileSum(t, second) != servicestest.Sum(128<<10) {
					t.Fatal("files differ after the retried complete")
				}
			case "cancel":
				s.action(id, "cancel")
				s.until(id, "cleanup", func(j *job.Job) bool { return j.State == job.Cancelled && !j.PendingCleanup })
				if _, err := os.Stat(filepath.FromSlash(first)); !os.IsNotExist(err) {
					t.Fatalf("the renamed file survived the cancel: %v", err)
				}
			}
			if left := partFiles(t, s.root); len(left) != 0 {
				t.Fatalf("temporary files left: %v", left)
			}
		})
	}
}
