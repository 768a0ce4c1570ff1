package bench

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ballast-dev/ballast/greeter"
)

// fakeReport is a report as a run would make it, with one measured
// section (two runs), one with a pending row and one not measured.
func fakeReport() *Report {
	data := &Section{
		ID: "data-path", Title: "2. Data-path cost (unary)", Description: "unary calls",
		Columns: []column{{colCPU, "proxy CPU µs/call", 1}, {colP99, "p99 ms", 3}},
		Rows: []*row{
			{Path: "nginx", Values: map[string][]float64{colCPU: {30, 26}, colP99: {2, 2}}},
			{Path: "haproxy", Values: map[string][]float64{colCPU: {20, 20}, colP99: {1, 1}}},
			{Path: "sidecar", Note: "pending: the sidecar proxy (issue 5) has not landed on main yet"},
		},
		Charts: []chart{{File: "cpu.png", Column: colCPU, Title: "CPU per call", YLabel: "µs"}},
	}
	data.ratio("nginx proxy CPU per call ÷ haproxy's", colCPU, "nginx", "haproxy", 1).Top = true
	data.ratio("sidecar proxy CPU per call ÷ haproxy's", colCPU, "sidecar", "haproxy", 1)
	return &Report{
		Date: time.Date(2026, 11, 25, 21, 0, 0, 0, time.UTC), Wall: 95 * time.Second, Quick: true, Runs: 2,
		Machine: machine{Cores: 2, CPU: "AMD EPYC", GoVersion: "go1.26.8", OS: "linux/amd64",
			Peers: map[string]string{"nginx": "nginx/1.22.1", "haproxy": "haproxy/2.6.12"}},
		Sections: []*Section{data, notMeasured("convergence", "4. Convergence", "new pod → first call", "not yet measured: needs istiod")},
	}
}

func TestReportMarkdown(t *testing.T) {
	md := fakeReport().markdown()
	for _, want := range []string{
		"# Benchmarks",
		"| date | 2026-11-25T21:00:00Z |",
		"| machine | 2 cores, AMD EPYC, linux/amd64 |",
		"| Go | go1.26.8 |",
		"nginx nginx/1.22.1, haproxy/2.6.12",
		"quick (`--quick`), 2 runs per measurement",
		"| wall time | 1m35s (peers already installed) |",
		"## 2. Data-path cost (unary)",
		"| path | proxy CPU µs/call | p99 ms |",
		"| nginx | 28.0 [26.0–30.0] | 2.000 |",
		"| haproxy | 20.0 | 1.000 |",
		"| sidecar | pending: the sidecar proxy (issue 5) has not landed on main yet | |",
		// Ratios within each run: 30/20 and 26/20.
		"- 2. Data-path cost (unary): nginx proxy CPU per call ÷ haproxy's: 1.40 [1.30–1.50] (target ≤ 1: NOT met in any of 2 runs, worst 1.50)",
		"sidecar proxy CPU per call ÷ haproxy's: not measured yet, sidecar has no numbers (pending)",
		"![CPU per call](cpu.png)",
		"## 4. Convergence",
		"**not yet measured: needs istiod**",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestReportWriteMakesMarkdownAndCharts(t *testing.T) {
	dir := t.TempDir()
	if err := fakeReport().Write(dir); err != nil {
		t.Fatal(err)
	}
	png, err := os.ReadFile(filepath.Join(dir, "cpu.png"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) {
		t.Errorf("cpu.png is not a PNG: % x", png[:min(8, len(png))])
	}
	if _, err := os.Stat(filepath.Join(dir, "benchmarks.md")); err != nil {
		t.Error(err)
	}
}

func TestSectionWriteText(t *testing.T) {
	var b strings.Builder
	fakeReport().Sections[0].WriteText(&b)
	for _, want := range []string{"2. Data-path cost (unary)\n=====", "nginx    28.0 [26.0–30.0]", "sidecar  pending:", "target ≤ 1: NOT met in any of 2 runs, worst 1.50"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text lacks %q:\n%s", want, b.String())
		}
	}
}

// A target reads "met" only when every run meets it; otherwise the count
// and the worst run. Runs dropped from a ratio are counted, and a value
// below zero is called noise, never met.
func TestHeadlineVerdict(t *testing.T) {
	tests := []struct {
		name string
		a, b []float64
		want string
	}{
		{"every run", []float64{1, 2, 3}, []float64{4, 4, 4}, "x ÷ y: 0.50 [0.25–0.75] (target ≤ 1: met in all 3 runs)"},
		{"one run", []float64{1}, []float64{4}, "x ÷ y: 0.25 (target ≤ 1: met in its one run)"},
		{"some runs", []float64{1, 5, 3}, []float64{4, 4, 4}, "x ÷ y: 0.75 [0.25–1.25] (target ≤ 1: NOT met: met in 2 of 3 runs, worst 1.25)"},
		{"one run, not met", []float64{8}, []float64{4}, "x ÷ y: 2.00 (target ≤ 1: NOT met in its one run)"},
		{"no run", []float64{8, 5}, []float64{4, 4}, "x ÷ y: 1.62 [1.25–2.00] (target ≤ 1: NOT met in any of 2 runs, worst 2.00)"},
		{"dropped", []float64{1, 1, 1}, []float64{4, 0, -1}, "x ÷ y: 0.25 (target ≤ 1: met in its one run; 2 of 3 runs left out: y's v not above zero)"},
		{"noise", []float64{-1, 2}, []float64{4, 4}, "x ÷ y: 0.12 [-0.25–0.50] (target ≤ 1: NOT met: met in 1 of 2 runs, worst 0.50; " +
			"below zero in 1 of 2 runs: noise (the path added less than direct's p99 varies), not a result)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Section{Rows: []*row{{Path: "x", Values: map[string][]float64{"v": tt.a}}, {Path: "y", Values: map[string][]float64{"v": tt.b}}}}
			if got := s.ratio("x ÷ y", "v", "x", "y", 1).format(); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	tests := []struct {
		in   []float64
		want summary
		text string
	}{
		{[]float64{3, 1, 2}, summary{1, 2, 3}, "2.0 [1.0–3.0]"},
		{[]float64{4, 1, 2, 3}, summary{1, 2.5, 4}, "2.5 [1.0–4.0]"},
		{[]float64{5}, summary{5, 5, 5}, "5.0"},
	}
	for _, tt := range tests {
		got := summarize(tt.in)
		if got != tt.want || got.format(1) != tt.text {
			t.Errorf("summarize(%v) = %v %q, want %v %q", tt.in, got, got.format(1), tt.want, tt.text)
		}
	}
	if s := summarize(nil); !math.IsNaN(s.Median) || s.format(1) != "–" {
		t.Errorf("summarize(nil) = %v %q", s, s.format(1))
	}
}

func TestQuantileAndBalance(t *testing.T) {
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tt := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {0.999, 999 * time.Millisecond}, {1, time.Second}, {0, time.Millisecond}} {
		if got := quantile(lat, tt.q); got != tt.want {
			t.Errorf("quantile(1..1000 ms, %v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	if quantile(nil, 0.5) != 0 {
		t.Error("quantile of nothing is not 0")
	}
	for _, tt := range []struct {
		pods map[string]int
		want float64
	}{
		{map[string]int{"a": 100, "b": 100, "c": 100}, 1},
		{map[string]int{"a": 0, "b": 0, "c": 300}, 3},
		{map[string]int{"a": 50, "b": 100, "c": 150}, 1.5},
		{map[string]int{}, 0},
	} {
		if got := greeter.MaxOverMean(tt.pods, len(tt.pods)); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("MaxOverMean(%v) = %v, want %v", tt.pods, got, tt.want)
		}
	}
	if got := share(map[string]int{"slow": 25, "a": 75}, "slow"); got != 0.25 {
		t.Errorf("share = %v, want 0.25", got)
	}
}

func TestShortenKeepsBothEnds(t *testing.T) {
	long := "failed: all 1500 calls failed; " + strings.Repeat("x", 1000) + " cannot unmarshal number into decay"
	got := shorten(long)
	if len([]rune(got)) > 310 || !strings.HasPrefix(got, "failed: all 1500 calls failed;") || !strings.HasSuffix(got, "cannot unmarshal number into decay") {
		t.Errorf("shorten = %q", got)
	}
	if shorten("pending: short") != "pending: short" {
		t.Error("a short note was changed")
	}
}

// Runs where the other side is zero or negative give no ratio.
func TestRatioSkipsNonPositiveDenominators(t *testing.T) {
	s := &Section{Rows: []*row{
		{Path: "sidecar", Values: map[string][]float64{colP99Added: {2, 3, 4}}},
		{Path: "haproxy", Values: map[string][]float64{colP99Added: {-1, 0, 2}}},
	}}
	if h := s.ratio("added", colP99Added, "sidecar", "haproxy", 1); len(h.Values) != 1 || h.Values[0] != 2 {
		t.Errorf("ratio values %v, want [2] (only the run where haproxy's is above zero)", h.Values)
	}
	s.Rows[1].Values[colP99Added] = []float64{-1, 0, -2}
	if h := s.ratio("added", colP99Added, "sidecar", "haproxy", 1); len(h.Values) != 0 || h.Note == "" {
		t.Errorf("ratio %v note %q, want none with a note", h.Values, h.Note)
	}
}
