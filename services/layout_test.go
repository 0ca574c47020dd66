package services_test

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ferry-dev/ferry"

// TestDependencyDirection keeps DESIGN.md's rules: cmd → services →
// {coordinator, agent, certvault} → {job, events}; job → events; events
// imports nothing of ours; never agent ↔ coordinator, certvault → agent or
// coordinator, anything → services except cmd.
func TestDependencyDirection(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	top := func(pkg string) string {
		rest := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		first, _, _ := strings.Cut(rest, "/")
		return first
	}
	// allowed[from] lists the top-level packages from may import.
	allowed := map[string][]string{
		"events":      {"events"},
		"job":         {"job", "events"},
		"coordinator": {"coordinator", "certvault", "job", "events"},
		"agent":       {"agent", "certvault", "job", "events"},
		"certvault":   {"certvault", "job", "events"},
		"services":    {"services", "coordinator", "agent", "certvault", "job", "events"},
		"cmd":         {"cmd", "services", "job", "events", "coordinator", "certvault"},
		"bench":       {"bench", "services", "coordinator", "agent", "certvault", "job", "events"},
		"examples":    {"examples", "events", "job"},
	}
	checked := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		from := top(fields[0])
		ok, known := allowed[from]
		if !known {
			t.Errorf("package %s is outside the layout of DESIGN.md", fields[0])
			continue
		}
		for _, imp := range fields[1:] {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			checked++
			to := top(imp)
			permitted := false
			for _, a := range ok {
				permitted = permitted || a == to
			}
			if !permitted {
				t.Errorf("%s imports %s: %s may not depend on %s", fields[0], imp, from, to)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no imports of ours were checked: the test is not looking at the module")
	}
}

// TestPackagesAreDocumented: every package says what it owns.
func TestPackagesAreDocumented(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}}|{{.Doc}}`, module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, doc, _ := strings.Cut(line, "|")
		if strings.TrimSpace(doc) == "" {
			t.Errorf("package %s has no doc comment", pkg)
		}
	}
}
