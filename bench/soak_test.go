package bench

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The soak's short version: the sidecar and the control plane under load
// with endpoint churn, both sampled throughout, no failed call, and a
// report with a growth per hour for every measure. What the growth is
// says nothing in two minutes; that it is measured is what CI keeps.
func TestSoakShort(t *testing.T) {
	b := newTestBench(t)
	b.opts.Binary = ballastBinary(t)
	b.opts.ProxyBinary = buildBinary(t, "ballast-proxy", true)
	b.opts.ControlBinary = buildBinary(t, "ballast-control", true)
	d := 2 * time.Minute
	if testing.Short() {
		d = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(t.Context(), d+2*time.Minute)
	defer cancel()
	rep := b.Soak(ctx, DefaultSoak(d))
	var text strings.Builder
	rep.WriteText(&text)
	t.Log(text.String())
	if rep.Failed != "" {
		t.Fatal(rep.Failed)
	}
	if rep.Errors != 0 {
		t.Errorf("%d of %d calls failed through endpoint churn; last: %s", rep.Errors, rep.Calls, rep.LastErr)
	}
	if rep.Calls == 0 || rep.Churns < 2 {
		t.Errorf("%d calls, %d churns: the soak did not run", rep.Calls, rep.Churns)
	}
	if len(rep.Samples) < 10 {
		t.Errorf("%d samples, want at least 10", len(rep.Samples))
	}
	for _, row := range rep.rows() {
		if !(row.First > 0) || math.IsNaN(row.PerHour) {
			t.Errorf("%s: first %v, growth %v per hour: not measured", row.What, row.First, row.PerHour)
		}
	}
	dir := t.TempDir()
	if err := rep.Write(dir); err != nil {
		t.Fatal(err)
	}
	if md, err := os.ReadFile(filepath.Join(dir, "soak.md")); err != nil || !strings.Contains(string(md), "| sidecar goroutines |") {
		t.Errorf("soak.md: %v\n%s", err, md)
	}
}

func TestPerHour(t *testing.T) {
	samples := []soakSample{{At: 0, SidecarRSS: 10 << 20}, {At: 30 * time.Minute, SidecarRSS: 15 << 20}, {At: time.Hour, SidecarRSS: 20 << 20}}
	if got := perHour(samples, func(s soakSample) float64 { return mib(s.SidecarRSS) }); math.Abs(got-10) > 1e-9 {
		t.Errorf("growth %v MiB/hour, want 10", got)
	}
	if got := perHour(samples[:1], func(s soakSample) float64 { return 1 }); !math.IsNaN(got) {
		t.Errorf("one sample: growth %v, want NaN", got)
	}
}

func TestLogLines(t *testing.T) {
	out := "time=1 level=INFO msg=serving\n" +
		"time=2 level=WARN msg=\"call arrived with its deadline already passed\" method=/helloworld.Greeter/SayHello left=-1ms peer=127.0.0.1:5\n" +
		"time=3 level=WARN msg=\"call arrived with its deadline already passed\" method=/helloworld.Greeter/SayHello left=-2ms peer=127.0.0.1:5\n" +
		"time=4 level=ERROR msg=\"upstream broke HTTP/2; its connection is closed\"\n"
	for _, tc := range []struct {
		name      string
		match     func(string) bool
		keep      int
		wantN     int
		wantFirst []string // substrings, one per kept line
	}{
		{"spent on arrival", isSpentOnArrival, 1, 2, []string{"left=-1ms"}},
		{"warnings and errors", isWarning, 5, 3, []string{"left=-1ms", "left=-2ms", "upstream broke"}},
		{"none kept", isWarning, 0, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, first := logLines(out, tc.match, tc.keep)
			if n != tc.wantN || len(first) != len(tc.wantFirst) {
				t.Fatalf("logLines: %d, %q; want %d, %d lines", n, first, tc.wantN, len(tc.wantFirst))
			}
			for i, want := range tc.wantFirst {
				if !strings.Contains(first[i], want) {
					t.Errorf("line %d %q; want it to say %q", i, first[i], want)
				}
			}
		})
	}
	if n, _ := logLines("time=1 level=INFO msg=serving\n", isWarning, 1); n != 0 {
		t.Errorf("a quiet process: %d warnings, want 0", n)
	}
}
