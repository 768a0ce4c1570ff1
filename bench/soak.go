package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// SoakConfig sizes the soak: moderate load through the sidecar for
// Duration while the Service's endpoints churn, sampling the memory and
// goroutines of the control plane and the sidecar.
type SoakConfig struct {
	Duration time.Duration
	// Sample is how often RSS and goroutines are read.
	Sample time.Duration
	// Churn is how often one endpoint is swapped for another.
	Churn time.Duration
	// Rate is the calls per second, Concurrency at a time.
	Rate, Concurrency int
}

// DefaultSoak is a soak of d at moderate load.
func DefaultSoak(d time.Duration) SoakConfig {
	return SoakConfig{Duration: d, Sample: max(time.Second, d/120), Churn: 2 * time.Second, Rate: 500, Concurrency: 4}
}

// soakSample is one reading of both processes.
type soakSample struct {
	At                             time.Duration
	ControlRSS, SidecarRSS         int64
	ControlGoroutines, SidecarGoro float64
}

// soakFailure is one slice of load with failed calls.
type soakFailure struct {
	At, SinceChurn time.Duration
	Errors         int
	// Err is the last failed call's error, After how long it took.
	Err   string
	After time.Duration
}

// maxSoakFailures bounds the failures a report keeps.
const maxSoakFailures = 20

// SoakReport is what a soak measured.
type SoakReport struct {
	Date    time.Time     `json:"date"`
	Wall    time.Duration `json:"wall"`
	Machine machine       `json:"machine"`
	Config  SoakConfig    `json:"config"`
	Calls   int           `json:"calls"`
	Errors  int           `json:"errors"`
	Churns  int           `json:"churns"`
	Samples []soakSample  `json:"samples"`
	Failed  string        `json:"failed,omitempty"`
	LastErr string        `json:"last_error,omitempty"`
	// Failures are the first slices of load that had failed calls, each
	// with how long after the last endpoint change it began: calls that
	// fail right after a change point at the change, calls that fail
	// long after it at the data path itself.
	Failures []soakFailure `json:"failures,omitempty"`
	// SidecarCounters are the sidecar's own counters (ballast_proxy_*,
	// histograms aside) at the end of a soak with failed calls: what the
	// sidecar saw of them.
	SidecarCounters []string `json:"sidecar_counters,omitempty"`
	// SpentOnArrival counts, per greeter, the calls it warned arrived
	// with their deadline already passed (it answers those at once with
	// DEADLINE_EXCEEDED), with the first such warning.
	SpentOnArrival []string `json:"spent_on_arrival,omitempty"`
	// SidecarWarnings are the first of the sidecar's own warnings and
	// errors (an upstream that broke HTTP/2, say), with their count.
	SidecarWarnings []string `json:"sidecar_warnings,omitempty"`
	DataPath        string   `json:"data_path,omitempty"`
}

// Soak runs pods on loopback, the control plane over a folder whose
// manifest it rewrites every Churn (one endpoint out, another in), and the
// sidecar in front of the client, with load through it for Duration.
func (b *Bench) Soak(ctx context.Context, c SoakConfig) *SoakReport {
	start := time.Now()
	rep := &SoakReport{Date: start.UTC(), Machine: thisMachine(), Config: c}
	rep.DataPath, _ = stampOf()
	defer func() {
		rep.Machine.LoadEnd = loadAverage()
		rep.Wall = time.Since(start)
	}()
	fail := func(err error) *SoakReport { rep.Failed = err.Error(); return rep }
	if err := b.hasCommand("proxy", "the sidecar proxy"); err != nil {
		return fail(err)
	}
	specs := []podSpec{{Name: "pod-a"}, {Name: "pod-b"}, {Name: "pod-c"}, {Name: "pod-d"}}
	pods, err := startPods(ctx, b.opts.Greeter, specs)
	if err != nil {
		return fail(err)
	}
	defer stopPods(pods)
	serving := pods[:3]
	control, err := b.startControl(ctx, nil, serving, "round_robin", defaultClusterIP, nil)
	if err != nil {
		return fail(err)
	}
	defer control.proc.stop()
	proxy, ports, err := b.startSidecar(ctx, control)
	if err != nil {
		return fail(err)
	}
	defer proxy.stop()
	conn, err := dial(&route{Target: "passthrough:///" + ports[0].String()})
	if err != nil {
		return fail(err)
	}
	defer conn.Close()

	// The soak's end bounds when slices of load start; no call carries it
	// as its deadline (see stopped).
	end := time.Now().Add(c.Duration)
	sample := func() {
		s := soakSample{At: time.Since(start)}
		if u, err := treeUsage(control.proc.pid()); err == nil {
			s.ControlRSS = u.RSS
		}
		if u, err := treeUsage(proxy.pid()); err == nil {
			s.SidecarRSS = u.RSS
		}
		s.ControlGoroutines = goroutines(ctx, control.http)
		s.SidecarGoro = goroutines(ctx, ports[1])
		rep.Samples = append(rep.Samples, s)
		if len(rep.Samples)%12 == 1 { // about every tenth of the soak
			b.progress("soak: %s of %s: %d calls, %d errors, %d churns; control plane RSS %.1f MiB, sidecar RSS %.1f MiB",
				s.At.Round(time.Second), c.Duration, rep.Calls, rep.Errors, rep.Churns, mib(s.ControlRSS), mib(s.SidecarRSS))
		}
	}
	sample()
	sampleTick, churnTick := time.NewTicker(c.Sample), time.NewTicker(c.Churn)
	defer sampleTick.Stop()
	defer churnTick.Stop()
	// The load runs in slices of a tenth of a second at Rate, so memory
	// for latencies stays bounded however long the soak.
	const slice = 100 * time.Millisecond
	perSlice := max(1, c.Rate/10)
	lastChurn := time.Now()
	for ctx.Err() == nil && time.Now().Before(end) {
		began := time.Now()
		res := load{Calls: perSlice, Concurrency: c.Concurrency, Duration: slice}.Run(ctx, conn)
		rep.Calls += res.Calls
		if ctx.Err() == nil {
			rep.Errors += res.Errors
			if res.LastError != "" {
				rep.LastErr = res.LastError
			}
			if res.Errors > 0 && len(rep.Failures) < maxSoakFailures {
				rep.Failures = append(rep.Failures, soakFailure{At: began.Sub(start), SinceChurn: began.Sub(lastChurn), Errors: res.Errors, Err: res.LastError, After: res.LastErrorAfter})
			}
		}
		select {
		case <-sampleTick.C:
			sample()
		case <-churnTick.C:
			// One endpoint out, the one left out last time in: serving
			// is pods[:3], pods[3] the one left out.
			out := rep.Churns % 3
			pods[out], pods[3] = pods[3], pods[out]
			if manifest, err := serviceManifest(serving, defaultClusterIP); err == nil {
				if err := writeAtomic(filepath.Join(control.dir, "greeter.yaml"), manifest); err != nil {
					return fail(err)
				}
				rep.Churns++
				lastChurn = time.Now()
			}
		default:
		}
		if rest := slice - time.Since(began); rest > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(rest):
			}
		}
	}
	sample()
	if rep.Errors > 0 {
		for _, p := range pods {
			if n, first := logLines(p.proc.output(), isSpentOnArrival, 1); n > 0 {
				rep.SpentOnArrival = append(rep.SpentOnArrival, fmt.Sprintf("%s: %d, the first: %s", p.Name, n, first[0]))
			}
		}
		if n, first := logLines(proxy.output(), isWarning, maxSoakFailures); n > 0 {
			rep.SidecarWarnings = append([]string{fmt.Sprintf("%d, the first:", n)}, first...)
		}
		for _, line := range metricLines(ctx, ports[1], "ballast_proxy_") {
			if !strings.Contains(line, "_bucket{") {
				rep.SidecarCounters = append(rep.SidecarCounters, line)
			}
		}
	}
	return rep
}

// logLines counts the lines of a process's output that match, and returns
// the first keep of them.
func logLines(output string, match func(line string) bool, keep int) (n int, first []string) {
	for line := range strings.Lines(output) {
		if match(line) {
			if n < keep {
				first = append(first, strings.TrimSpace(line))
			}
			n++
		}
	}
	return n, first
}

// isSpentOnArrival matches a greeter's warning of a call that arrived out
// of time (greeter.Server's tap).
func isSpentOnArrival(line string) bool {
	return strings.Contains(line, "call arrived with its deadline already passed")
}

// isWarning matches a warning or an error of slog's text format.
func isWarning(line string) bool {
	return strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR")
}

// writeAtomic replaces file with data in one rename, so the control
// plane's watch never reads half a manifest.
func writeAtomic(file string, data []byte) error {
	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// goroutines reads go_goroutines from a process's /metrics; NaN when it
// has none.
func goroutines(ctx context.Context, addr netip.AddrPort) float64 {
	for _, line := range metricLines(ctx, addr, "go_goroutines ") {
		if f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, "go_goroutines ")), 64); err == nil {
			return f
		}
	}
	return math.NaN()
}

// metricLines are the lines of a process's /metrics that begin with
// prefix; none when it cannot be read.
func metricLines(ctx context.Context, addr netip.AddrPort, prefix string) []string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr.String()+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			lines = append(lines, sc.Text())
		}
	}
	return lines
}

// perHour is the least-squares slope of ys over the samples' times, per
// hour; NaN with fewer than two samples or any NaN value.
func perHour(samples []soakSample, y func(soakSample) float64) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, s := range samples {
		x, v := s.At.Hours(), y(s)
		if math.IsNaN(v) {
			return math.NaN()
		}
		n++
		sx += x
		sy += v
		sxx += x * x
		sxy += x * v
	}
	if n < 2 || n*sxx-sx*sx == 0 {
		return math.NaN()
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

// soakRow is one measure of the report: first, last and highest sample,
// and the growth per hour.
type soakRow struct {
	What                       string
	First, Last, Peak, PerHour float64
	Unit                       string
}

func (r *SoakReport) rows() []soakRow {
	type measure struct {
		what, unit string
		y          func(soakSample) float64
	}
	var rows []soakRow
	for _, m := range []measure{
		{"control plane RSS", "MiB", func(s soakSample) float64 { return mib(s.ControlRSS) }},
		{"control plane goroutines", "", func(s soakSample) float64 { return s.ControlGoroutines }},
		{"sidecar RSS", "MiB", func(s soakSample) float64 { return mib(s.SidecarRSS) }},
		{"sidecar goroutines", "", func(s soakSample) float64 { return s.SidecarGoro }},
	} {
		row := soakRow{What: m.what, Unit: m.unit, First: math.NaN(), Last: math.NaN(), Peak: math.NaN(), PerHour: perHour(r.Samples, m.y)}
		for i, s := range r.Samples {
			v := m.y(s)
			if i == 0 {
				row.First, row.Peak = v, v
			}
			row.Last, row.Peak = v, max(row.Peak, v)
		}
		rows = append(rows, row)
	}
	return rows
}

// WriteText prints the soak's figures.
func (r *SoakReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "\nSoak\n====\n")
	if r.Failed != "" {
		fmt.Fprintln(w, "failed:", r.Failed)
		return
	}
	fmt.Fprintf(w, "%s at %d calls/s (%d at a time) through the sidecar, one endpoint swapped every %s: %d calls, %d failed, %d churns, %d samples\n",
		r.Wall.Round(time.Second), r.Config.Rate, r.Config.Concurrency, r.Config.Churn, r.Calls, r.Errors, r.Churns, len(r.Samples))
	for _, row := range r.rows() {
		fmt.Fprintf(w, "  %-26s first %8.1f  last %8.1f  peak %8.1f  growth %+8.1f %s/hour\n", row.What, row.First, row.Last, row.Peak, row.PerHour, row.Unit)
	}
	if r.LastErr != "" {
		fmt.Fprintf(w, "  last failed call: %s\n", r.LastErr)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(w, "  at %s (%s after an endpoint change): %d failed; the last after %s: %s\n",
			f.At.Round(time.Millisecond), f.SinceChurn.Round(time.Millisecond), f.Errors, f.After.Round(time.Millisecond), f.Err)
	}
	if len(r.SpentOnArrival) > 0 {
		fmt.Fprintf(w, "  calls the greeters got with their deadline already passed:\n")
		for _, line := range r.SpentOnArrival {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	if len(r.SidecarWarnings) > 0 {
		fmt.Fprintf(w, "  the sidecar's warnings and errors: %s\n", r.SidecarWarnings[0])
		for _, line := range r.SidecarWarnings[1:] {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	if len(r.SidecarCounters) > 0 {
		fmt.Fprintf(w, "  the sidecar's counters at the end:\n")
		for _, line := range r.SidecarCounters {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
}

func (r *SoakReport) markdown() string {
	var b strings.Builder
	b.WriteString("# Soak\n\nGenerated by `ballast bench --soak DURATION` — do not edit; run the command again to refresh it.\n\n")
	fmt.Fprintf(&b, "| | |\n|---|---|\n| date | %s |\n| machine | %d cores, %s, %s |\n", r.Date.Format(time.RFC3339), r.Machine.Cores, mdCell(r.Machine.CPU), r.Machine.OS)
	fmt.Fprintf(&b, "| load | 1-minute load average %.1f at the start, %.1f at the end |\n", r.Machine.LoadStart, r.Machine.LoadEnd)
	fmt.Fprintf(&b, "| data path | %s |\n\n", dataPathCell(r.DataPath, ""))
	if r.Failed != "" {
		fmt.Fprintf(&b, "**Failed: %s**\n", mdCell(r.Failed))
		return b.String()
	}
	fmt.Fprintf(&b, "For %s, %d calls a second (%d at a time) from one client connection through the sidecar (ballast-proxy, explicit listener) "+
		"to 3 of 4 greeter pods on loopback, while every %s the control plane's folder swaps one endpoint for the one left out: "+
		"%d calls, %d failed, %d endpoint changes. RSS (VmRSS from /proc) and goroutines (go_goroutines from each process's /metrics) "+
		"sampled every %s (%d samples); growth per hour is the least-squares slope over every sample.\n\n",
		r.Wall.Round(time.Second), r.Config.Rate, r.Config.Concurrency, r.Config.Churn, r.Calls, r.Errors, r.Churns, r.Config.Sample, len(r.Samples))
	b.WriteString("| measure | first | last | peak | growth per hour |\n|---|---:|---:|---:|---:|\n")
	for _, row := range r.rows() {
		unit := ""
		if row.Unit != "" {
			unit = " " + row.Unit
		}
		fmt.Fprintf(&b, "| %s | %.1f%s | %.1f%s | %.1f%s | %+.1f%s |\n", row.What, row.First, unit, row.Last, unit, row.Peak, unit, row.PerHour, unit)
	}
	if r.LastErr != "" {
		fmt.Fprintf(&b, "\nThe last failed call: %s\n", mdCell(r.LastErr))
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(&b, "\nThe first %d slices of 100 ms with failed calls:\n\n| at | after an endpoint change | failed | the last one's time | its error |\n|---:|---:|---:|---:|---|\n", len(r.Failures))
		for _, f := range r.Failures {
			fmt.Fprintf(&b, "| %s | %s | %d | %s | %s |\n", f.At.Round(time.Millisecond), f.SinceChurn.Round(time.Millisecond), f.Errors, f.After.Round(time.Millisecond), mdCell(f.Err))
		}
	}
	if r.Config.Duration < 10*time.Minute {
		b.WriteString("\nA run this short says little per hour: warm-up growth dominates the slope.\n")
	}
	return b.String()
}

// Write writes soak.md into dir.
func (r *SoakReport) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "soak.md"), []byte(r.markdown()), 0o644)
}
