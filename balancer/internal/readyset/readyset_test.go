package readyset

import (
	rand "math/rand/v2"
	"testing"
)

func TestPairAndDraw(t *testing.T) {
	for n := uint64(2); n <= 9; n++ {
		for a := range n {
			for b := range n {
				if a == b {
					continue
				}
				if ga, gb := Pair(Draw(a, b, n), n); ga != a || gb != b {
					t.Fatalf("n=%d: Pair(Draw(%d,%d)) = (%d,%d)", n, a, b, ga, gb)
				}
			}
		}
		seen := map[[2]uint64]int{}
		for range 20000 {
			a, b := Pair(rand.Uint64(), n)
			if a == b || a >= n || b >= n {
				t.Fatalf("n=%d: Pair gave (%d,%d)", n, a, b)
			}
			seen[[2]uint64{a, b}]++
		}
		if want := int(n * (n - 1)); len(seen) != want {
			t.Fatalf("n=%d: %d distinct ordered pairs drawn, want %d", n, len(seen), want)
		}
	}
}
