package demo

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// WriteText prints, per mode, a row per pod with its count and a bar, and
// the mode's max/mean figure.
func (r *Result) WriteText(w io.Writer) {
	const width = 40
	for _, m := range r.Modes {
		fmt.Fprintf(w, "%s: %s\n", m.Mode, m.Description)
		for _, pod := range slices.Sorted(maps.Keys(m.Pods)) {
			n := m.Pods[pod]
			share := 0.0
			if m.Calls > 0 {
				share = float64(n) / float64(m.Calls)
			}
			bar := strings.Repeat("█", int(share*width+0.5))
			fmt.Fprintf(w, "  %-32s %5d  %-*s %5.1f%%\n", pod, n, width, bar, 100*share)
		}
		if len(m.Versions) > 0 {
			fmt.Fprint(w, " ")
			for _, v := range slices.Sorted(maps.Keys(m.Versions)) {
				fmt.Fprintf(w, " %s %d (%.1f%%)", v, m.Versions[v], 100*float64(m.Versions[v])/float64(max(m.Calls, 1)))
			}
			fmt.Fprintf(w, "; calls %d, errors %d, max/mean over v1's pods %.2f\n", m.Calls, m.Errors, m.MaxMean)
		} else {
			fmt.Fprintf(w, "  calls %d, errors %d, max/mean %.2f (1.00 is even; %d means one pod took every call)\n",
				m.Calls, m.Errors, m.MaxMean, len(m.Pods))
		}
		if m.LastError != "" {
			fmt.Fprintf(w, "  last error: %s\n", m.LastError)
		}
		fmt.Fprintln(w)
	}
}
