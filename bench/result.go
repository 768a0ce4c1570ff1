package bench

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Report is everything one `ballast bench` run measured, in the shape the
// text tables, the charts and docs/benchmarks.md are made from.
type Report struct {
	Date    time.Time     `json:"date"`
	Wall    time.Duration `json:"wall"`
	Quick   bool          `json:"quick"`
	Runs    int           `json:"runs"`
	Machine machine       `json:"machine"`
	// DataPath stamps the data path the report measured (dataPathStamp),
	// and Commit says what was checked out; empty when not run from a
	// checkout of this module.
	DataPath string     `json:"data_path,omitempty"`
	Commit   string     `json:"commit,omitempty"`
	Sections []*Section `json:"sections"`
}

// machine is what the numbers were measured on.
type machine struct {
	Cores     int               `json:"cores"`
	CPU       string            `json:"cpu"`
	GoVersion string            `json:"go_version"`
	OS        string            `json:"os"`
	Peers     map[string]string `json:"peers"` // name → version
	// LoadStart and LoadEnd are /proc/loadavg's 1-minute load when the run
	// began and ended: anything else running shares the cores and shows
	// in the numbers.
	LoadStart float64 `json:"load_start"`
	LoadEnd   float64 `json:"load_end"`
	// PeerInstall is how long installing the peers took in this run; zero
	// when they were there already.
	PeerInstall time.Duration `json:"peer_install"`
}

// Section is one scenario: what it does, a table of rows, charts of some
// of its columns and headline ratios.
type Section struct {
	ID          string      `json:"id"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Columns     []column    `json:"columns"`
	Rows        []*row      `json:"rows"`
	Charts      []chart     `json:"charts"`
	Headlines   []*headline `json:"headlines"`
	// NotMeasured, when set, says why the scenario has no numbers yet.
	NotMeasured string `json:"not_measured,omitempty"`
}

// column is one measured quantity.
type column struct {
	Key    string `json:"key"`
	Header string `json:"header"`
	// Digits after the decimal point when printed.
	Digits int `json:"digits"`
}

// row is one path's numbers: a value per run for each column.
type row struct {
	Path string `json:"path"`
	// Note says why a row has no numbers ("pending: ...").
	Note   string               `json:"note,omitempty"`
	Values map[string][]float64 `json:"values,omitempty"`
	// Detail is extra text for the row, e.g. the calls per pod of the
	// last run.
	Detail string `json:"detail,omitempty"`
}

// chart draws one column's medians as bars, one per row with numbers.
type chart struct {
	File   string `json:"file"`
	Column string `json:"column"`
	Title  string `json:"title"`
	YLabel string `json:"y_label"`
}

// headline is a ratio between two rows of one column, taken within each
// run (so both sides saw the same machine at the same time) and then
// summarised across runs.
type headline struct {
	Text string `json:"text"`
	// Values are the ratio per run, or for an absolute headline the value.
	Values []float64 `json:"values"`
	// Target, when set, is the bound the ratio should stay at or under.
	Target float64 `json:"target,omitempty"`
	// Note says why there is no ratio (a side has no numbers).
	Note string `json:"note,omitempty"`
	// Dropped counts the runs left out of a ratio because its denominator
	// was not above zero; DroppedWhy says what that denominator was.
	Dropped    int    `json:"dropped,omitempty"`
	DroppedWhy string `json:"dropped_why,omitempty"`
	// Noise counts the runs whose numerator, a latency added over the
	// direct path, was below zero: noise, not a result, so never "met".
	Noise int `json:"noise,omitempty"`
	// Top puts the headline at the top of the report, not only in its
	// section.
	Top bool `json:"top,omitempty"`
	// Digits after the decimal point when printed; zero means 2.
	Digits int `json:"digits,omitempty"`
}

func (s *Section) row(path string) *row {
	for _, r := range s.Rows {
		if r.Path == path {
			return r
		}
	}
	r := &row{Path: path, Values: map[string][]float64{}}
	s.Rows = append(s.Rows, r)
	return r
}

// add records one run's value of column for path.
func (r *row) add(column string, v float64) {
	if r.Values == nil {
		r.Values = map[string][]float64{}
	}
	r.Values[column] = append(r.Values[column], v)
}

// ratio adds a headline: column of path a over column of path b, run by run.
func (s *Section) ratio(text, column, a, b string, target float64) *headline {
	h := &headline{Text: text, Target: target}
	va, vb, note := s.pair(column, a, b)
	switch {
	case note != "":
		h.Note = note
	default:
		// A ratio to a value at or below zero (an "added" latency lost in
		// noise) says nothing; such runs are left out and counted. A
		// numerator below zero is kept but counted as noise.
		for i := range min(len(va), len(vb)) {
			if vb[i] <= 0 {
				h.Dropped++
				continue
			}
			h.Values = append(h.Values, va[i]/vb[i])
			if va[i] < 0 {
				h.Noise++
			}
		}
		h.DroppedWhy = b + "'s " + column + " not above zero"
		if len(h.Values) == 0 {
			h.Note = b + "'s " + column + " is not above zero in any run"
		}
	}
	s.Headlines = append(s.Headlines, h)
	return h
}

// growth adds a headline: how much column grew from path a to path b, run
// by run, per unit of what differs between them (per).
func (s *Section) growth(text, column, a, b string, per float64) *headline {
	h := &headline{Text: text}
	va, vb, note := s.pair(column, a, b)
	switch {
	case note != "":
		h.Note = note
	default:
		for i := range min(len(va), len(vb)) {
			h.Values = append(h.Values, (vb[i]-va[i])/per)
		}
	}
	s.Headlines = append(s.Headlines, h)
	return h
}

// pair is column's values of the rows a and b, run by run; note says
// which side has none, and why, when one has not.
func (s *Section) pair(column, a, b string) (va, vb []float64, note string) {
	ra, rb := s.find(a), s.find(b)
	switch {
	case ra == nil || len(ra.Values[column]) == 0:
		return nil, nil, a + " has no numbers" + noteOf(ra)
	case rb == nil || len(rb.Values[column]) == 0:
		return nil, nil, b + " has no numbers" + noteOf(rb)
	}
	return ra.Values[column], rb.Values[column], ""
}

// noteOf is the first word of a row's note ("pending", "unavailable",
// "failed"); the table says the rest.
func noteOf(r *row) string {
	if r == nil || r.Note == "" {
		return ""
	}
	status, _, _ := strings.Cut(r.Note, ":")
	return " (" + status + ")"
}

func (s *Section) find(path string) *row {
	for _, r := range s.Rows {
		if r.Path == path {
			return r
		}
	}
	return nil
}

// value adds an absolute headline: column of path, per run.
func (s *Section) value(text, column, path string, target float64) *headline {
	h := &headline{Text: text, Target: target}
	if r := s.find(path); r == nil || len(r.Values[column]) == 0 {
		h.Note = path + " has no numbers" + noteOf(r)
	} else {
		h.Values = r.Values[column]
	}
	s.Headlines = append(s.Headlines, h)
	return h
}

// summary is the spread of a value over runs.
type summary struct{ Min, Median, Max float64 }

// summarize returns min, median and max of vs; NaN for none.
func summarize(vs []float64) summary {
	if len(vs) == 0 {
		return summary{math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return summary{s[0], med, s[len(s)-1]}
}

// format prints the median, and the range when the runs differ.
func (s summary) format(digits int) string {
	if math.IsNaN(s.Median) {
		return "–"
	}
	if s.Min == s.Max {
		return fmt.Sprintf("%.*f", digits, s.Median)
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", digits, s.Median, digits, s.Min, digits, s.Max)
}

func thisMachine() machine {
	m := machine{Cores: runtime.NumCPU(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, LoadStart: loadAverage()}
	if info, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(info)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// loadAverage is the 1-minute load average; 0 if unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
