package ejection

import (
	"math"

	"github.com/ballast-dev/ballast/policy"
)

// tally is one endpoint's calls in an interval.
type tally struct{ succeeded, failed uint32 }

func (t tally) calls() uint32 { return t.succeeded + t.failed }

// successRateOutliers is gRFC A50's success rate algorithm: among the
// endpoints with at least RequestVolume calls, if there are at least
// MinimumHosts of them, those whose success rate is below the mean by
// more than StdevFactor/1000 standard deviations. It returns their
// indexes in tallies, before enforcement and the max ejection percent.
func successRateOutliers(c policy.SuccessRateEjection, tallies []tally) []int {
	considered := withVolume(tallies, c.RequestVolume)
	if len(considered) == 0 || len(considered) < int(c.MinimumHosts) {
		return nil
	}
	rate := func(t tally) float64 { return float64(t.succeeded) / float64(t.calls()) }
	var sum float64
	for _, i := range considered {
		sum += rate(tallies[i])
	}
	mean := sum / float64(len(considered))
	var squares float64
	for _, i := range considered {
		d := rate(tallies[i]) - mean
		squares += d * d
	}
	required := mean - math.Sqrt(squares/float64(len(considered)))*float64(c.StdevFactor)/1000
	var out []int
	for _, i := range considered {
		if rate(tallies[i]) < required {
			out = append(out, i)
		}
	}
	return out
}

// failurePercentageOutliers is gRFC A50's failure percentage algorithm:
// among the endpoints with at least RequestVolume calls, if there are at
// least MinimumHosts of them, those whose calls failed more than
// Threshold percent. It returns their indexes in tallies, before
// enforcement and the max ejection percent.
func failurePercentageOutliers(c policy.FailurePercentageEjection, tallies []tally) []int {
	considered := withVolume(tallies, c.RequestVolume)
	if len(considered) == 0 || len(considered) < int(c.MinimumHosts) {
		return nil
	}
	var out []int
	for _, i := range considered {
		if t := tallies[i]; uint64(t.failed)*100 > uint64(c.Threshold)*uint64(t.calls()) {
			out = append(out, i)
		}
	}
	return out
}

// withVolume is the indexes of the tallies of at least volume calls
// (and at least one).
func withVolume(tallies []tally, volume uint32) []int {
	var out []int
	for i, t := range tallies {
		if t.calls() >= max(volume, 1) {
			out = append(out, i)
		}
	}
	return out
}
