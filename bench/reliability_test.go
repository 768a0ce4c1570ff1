package bench

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The CI-sized reliability scenario runs every fault on a dev cluster,
// under load in every mode, and reports figures for each: the code behind
// docs/reliability.md cannot rot. It needs root (network namespaces); in
// CI that is given, elsewhere it is skipped without.
func TestReliabilityShort(t *testing.T) {
	if os.Geteuid() != 0 {
		if inCI() {
			t.Fatal("the reliability scenario needs root, which CI has")
		}
		t.Skip("needs root (a dev cluster)")
	}
	b := newTestBench(t)
	b.opts.Binary = ballastBinary(t)
	b.opts.ProxyBinary = buildBinary(t, "ballast-proxy", true)
	b.opts.ControlBinary = buildBinary(t, "ballast-control", true)
	ctx, cancel := context.WithTimeout(t.Context(), 12*time.Minute)
	defer cancel()
	rep := b.Reliability(ctx, DefaultReliability(true), true)
	var text strings.Builder
	rep.WriteText(&text)
	t.Log(text.String())
	if rep.Failed != "" {
		t.Fatalf("scenario stopped: %s", rep.Failed)
	}
	if len(rep.Faults) != len(reliabilityFaults()) {
		t.Errorf("%d faults reported, want %d", len(rep.Faults), len(reliabilityFaults()))
	}
	for _, f := range rep.Faults {
		if f.Failed != "" {
			t.Errorf("%s: %s", f.ID, f.Failed)
			continue
		}
		if f.NotRun != "" {
			continue // said in the report, with why
		}
		var want []string
		for _, m := range relModes() {
			if m.measuredIn(f.ID) {
				want = append(want, m.Name)
			}
		}
		var got []string
		for _, row := range f.Rows {
			got = append(got, row.Mode)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: rows %q, want one per mode measured in it %q", f.ID, got, want)
		}
		for _, row := range f.Rows {
			if row.During == 0 {
				t.Errorf("%s: %s made no call during the fault: no load", f.ID, row.Mode)
			}
			// Issue 18's goal: an upgrade under load fails no call in any
			// of Ballast's modes.
			if f.ID == "upgrade" && row.Ballast && row.Failed > 0 {
				t.Errorf("upgrade from N to N+1: %s: %d failed calls (first: %s)", row.Mode, row.Failed, row.FirstErr)
			}
		}
	}
	dir := t.TempDir()
	if err := rep.Write(dir); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "reliability.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"do not edit", "## 1. Rolling update", "## 7. Upgrade", "| client-side (kubernetes:///) |", "reliability-failed.png"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("reliability.md lacks %q", want)
		}
	}
}
