package bench

import (
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tracker measures each (change, subscribed client) pair once, from
// the write to the first response that includes it; a response that
// carries a later change of the Service delivers the earlier ones too.
func TestPushTracker(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(msec int) time.Time { return t0.Add(time.Duration(msec) * time.Millisecond) }
	type write struct{ svc, seq, at int }
	type recv struct{ client, seq, at int }
	tests := []struct {
		name        string
		watch       map[int]int // client → service
		writes      []write
		recvs       []recv
		want        []int // latencies in ms, sorted
		wantPending int
	}{
		{
			name:   "one change, one client",
			watch:  map[int]int{0: 0},
			writes: []write{{0, 1, 0}},
			recvs:  []recv{{0, 1, 7}},
			want:   []int{7},
		},
		{
			name:   "a change reaches every client of its Service, not others",
			watch:  map[int]int{0: 0, 1: 0, 2: 1},
			writes: []write{{0, 1, 0}},
			recvs:  []recv{{0, 1, 3}, {1, 1, 9}},
			want:   []int{3, 9},
		},
		{
			name:   "a repeated response is not a second push",
			watch:  map[int]int{0: 0},
			writes: []write{{0, 1, 0}},
			recvs:  []recv{{0, 1, 5}, {0, 1, 50}},
			want:   []int{5},
		},
		{
			name:   "two changes folded into one push arrive together",
			watch:  map[int]int{0: 0},
			writes: []write{{0, 1, 0}, {0, 2, 10}},
			recvs:  []recv{{0, 2, 110}},
			want:   []int{100, 110},
		},
		{
			name:        "the initial state (an older marker) delivers nothing; an unseen change is pending",
			watch:       map[int]int{0: 0, 1: 0},
			writes:      []write{{0, 5, 0}},
			recvs:       []recv{{0, 4, 1}, {1, 5, 2}},
			want:        []int{2},
			wantPending: 1,
		},
		{
			name:   "a client that watches nothing is ignored",
			watch:  map[int]int{0: 0},
			writes: []write{{0, 1, 0}},
			recvs:  []recv{{7, 1, 1}, {0, 1, 4}},
			want:   []int{4},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newPushTracker()
			for c, s := range tt.watch {
				tr.watch(c, s)
			}
			for _, w := range tt.writes {
				tr.wrote(w.svc, w.seq, at(w.at))
			}
			for _, r := range tt.recvs {
				tr.received(r.client, r.seq, at(r.at))
			}
			var got []int
			for _, d := range tr.sorted() {
				got = append(got, int(d/time.Millisecond))
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("latencies %v ms, want %v", got, tt.want)
			}
			if p := tr.pending(); p != tt.wantPending {
				t.Errorf("pending %d, want %d", p, tt.wantPending)
			}
		})
	}
}

// A change that could not be written is not waited for.
func TestPushTrackerForget(t *testing.T) {
	tr := newPushTracker()
	tr.watch(0, 3)
	tr.wrote(3, 1, time.Now())
	tr.wrote(3, 2, time.Now())
	tr.forget(3, 2)
	if p := tr.pending(); p != 2-1 {
		t.Fatalf("pending %d after forgetting one of two changes, want 1", p)
	}
	tr.received(0, 1, time.Now())
	if p := tr.pending(); p != 0 {
		t.Errorf("pending %d, want 0", p)
	}
}

func TestWatchedServices(t *testing.T) {
	tests := []struct{ clients, services, perService, want int }{
		{100, 1000, 10, 10},
		{1000, 5000, 10, 100},
		{3, 20, 10, 1},
		{100, 5, 10, 5}, // never more Services than exist
		{10, 100, 0, 10},
	}
	for _, tt := range tests {
		if got := watchedServices(tt.clients, tt.services, tt.perService); got != tt.want {
			t.Errorf("watchedServices(%d clients, %d services, %d per service) = %d, want %d", tt.clients, tt.services, tt.perService, got, tt.want)
		}
	}
}

// Markers number changes in 198.19.0.0/16 and read back; the Services'
// own endpoints, in 198.18.0.0/16, are never taken for markers, and no two
// endpoints of the largest size share an address.
func TestMarkers(t *testing.T) {
	for _, seq := range []int{0, 1, 255, 256, 4097, maxScaleChanges} {
		got, ok := markerOf(markerAddr(seq))
		if !ok || got != seq {
			t.Errorf("markerOf(markerAddr(%d)) = %d, %v", seq, got, ok)
		}
	}
	seen := map[netip.Addr]bool{}
	const services, endpoints = 5000, 10
	for i := range services {
		for j := range endpoints - 1 {
			a := scaleAddr(i, j, endpoints)
			if _, ok := markerOf(a); ok {
				t.Fatalf("endpoint %d of service %d (%s) reads as a marker", j, i, a)
			}
			if seen[a] {
				t.Fatalf("endpoint %d of service %d: %s used twice", j, i, a)
			}
			seen[a] = true
		}
	}
	eps := scaleEndpoints(7, 10, 42)
	if len(eps) != 10 {
		t.Fatalf("%d endpoints, want 10", len(eps))
	}
	if seq, ok := markerOf(netip.MustParseAddr(eps[9].Addresses[0])); !ok || seq != 42 {
		t.Errorf("last endpoint %v: marker %d %v, want 42", eps[9].Addresses, seq, ok)
	}
	for _, e := range eps {
		if e.TargetRef != nil {
			t.Errorf("endpoint %v has a targetRef: istiod would wait for its Pod", e.Addresses)
		}
	}
}

func TestQuantile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{nil, 0.5, 0},
		{ms(5), 0.99, 5 * time.Millisecond},
		{ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{ms(hundred...), 0.5, 50 * time.Millisecond},
		{ms(hundred...), 0.99, 99 * time.Millisecond},
		{ms(hundred...), 1, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := quantile(tt.sorted, tt.q); got != tt.want {
			t.Errorf("quantile(%d values, %v) = %v, want %v", len(tt.sorted), tt.q, got, tt.want)
		}
	}
}

// The report rows and headlines: Ballast against istiod at every size,
// the control-plane targets at the first, and a side that could not run
// named in the headline instead of a number.
func TestScaleHeadlines(t *testing.T) {
	sizes := []scaleSize{{1000, 10, 100}, {5000, 10, 1000}}
	s := scaleSection(scaleConfig{Sizes: sizes, Changes: 10, ChangesPerSecond: 50, ClientsPerService: 10})
	b := s.row(scaleRow(ballastControl{}, sizes[0]))
	i := s.row(scaleRow(istiod{}, sizes[0]))
	for _, v := range []struct{ bp50, bp99, brss, ip50, ip99, irss float64 }{
		{2, 8, 30, 110, 180, 200},
		{4, 12, 32, 105, 170, 190},
	} {
		b.add(colPushP50, v.bp50)
		b.add(colPushP99, v.bp99)
		b.add(colRSS, v.brss)
		i.add(colPushP50, v.ip50)
		i.add(colPushP99, v.ip99)
		i.add(colRSS, v.irss)
	}
	s.row(scaleRow(ballastControl{}, sizes[1])).add(colPushP99, 20)
	s.row(scaleRow(istiod{}, sizes[1])).Note = "unavailable: istiod could not be built: exit status 1"
	scaleHeadlines(s, sizes)

	byText := map[string]*headline{}
	for _, h := range s.Headlines {
		byText[h.Text] = h
	}
	want := map[string]string{
		"Ballast push p50 ms (1k svc × 10, 100 clients)":          "3.00 [2.00–4.00] (target ≤ 10: met in both runs)",
		"Ballast push p99 ms (1k svc × 10, 100 clients)":          "10.00 [8.00–12.00] (target ≤ 50: met in both runs)",
		"Ballast RSS ÷ istiod's (1k svc × 10, 100 clients)":       "0.16 [0.15–0.17] (target ≤ 0.125: NOT met in any of 2 runs, worst 0.17)",
		"Ballast push p50 ÷ istiod's (1k svc × 10, 100 clients)":  "0.0281 [0.0182–0.0381]",
		"Ballast push p99 ÷ istiod's (5k svc × 10, 1000 clients)": "not measured yet",
	}
	for text, w := range want {
		h := byText[text]
		if h == nil {
			t.Errorf("no headline %q; have %v", text, slices.Collect(func(yield func(string) bool) {
				for k := range byText {
					if !yield(k) {
						return
					}
				}
			}))
			continue
		}
		if got := strings.TrimPrefix(h.format(), text+": "); !strings.HasPrefix(got, w) {
			t.Errorf("%s: %q, want it to start %q", text, got, w)
		}
	}
	if h := byText["Ballast push p99 ÷ istiod's (5k svc × 10, 1000 clients)"]; h != nil && !strings.Contains(h.Note, "unavailable") {
		t.Errorf("headline for an unavailable istiod says %q, want the row's status", h.Note)
	}
	if !byText["Ballast RSS ÷ istiod's (1k svc × 10, 100 clients)"].Top {
		t.Error("the memory target is not a top headline")
	}
}

// istiod listens only on loopback, serves no TLS port and gets no
// settings from the benchmark's own environment that would point it at
// another cluster.
func TestIstiodSetup(t *testing.T) {
	lo := func(p uint16) netip.AddrPort { return netip.AddrPortFrom(loopback, p) }
	args := istiodArgs("/tmp/kc", lo(1), lo(2), lo(3), lo(4), "/tmp/d")
	flags := map[string]string{}
	for i := 1; i+1 < len(args); i += 2 {
		flags[args[i]] = args[i+1]
	}
	if args[0] != "discovery" {
		t.Errorf("command %q, want discovery", args[0])
	}
	for _, f := range []string{"--httpAddr", "--grpcAddr", "--monitoringAddr"} {
		if ap, err := netip.ParseAddrPort(flags[f]); err != nil || !ap.Addr().IsLoopback() {
			t.Errorf("%s %q: want a loopback address", f, flags[f])
		}
	}
	if flags["--ctrlz_address"] != "127.0.0.1" {
		t.Errorf("--ctrlz_address %q, want 127.0.0.1", flags["--ctrlz_address"])
	}
	for _, f := range []string{"--secureGRPCAddr", "--httpsAddr"} {
		if v, ok := flags[f]; !ok || v != "" {
			t.Errorf("%s %q (set %v), want it set empty (no TLS serving)", f, v, ok)
		}
	}
	if flags["--kubeconfig"] != "/tmp/kc" {
		t.Errorf("--kubeconfig %q", flags["--kubeconfig"])
	}
	env := istiodEnv([]string{"PATH=/bin", "KUBECONFIG=/elsewhere", "KUBERNETES_SERVICE_HOST=10.0.0.1", "POD_NAMESPACE=x"})
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := got[k]; dup {
			t.Errorf("%s set twice", k)
		}
		got[k] = v
	}
	for k, v := range map[string]string{"PATH": "/bin", "POD_NAMESPACE": "istio-system", "ENABLE_CA_SERVER": "false",
		"PILOT_CERT_PROVIDER": "none", "INJECT_ENABLED": "false", "VALIDATION_WEBHOOK_CONFIG_NAME": ""} {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s=%q (set %v), want %q", k, g, ok, v)
		}
	}
	for _, k := range []string{"KUBECONFIG", "KUBERNETES_SERVICE_HOST"} {
		if _, ok := got[k]; ok {
			t.Errorf("%s passed on to istiod", k)
		}
	}
	n := istiodNode("client-1", "scale")
	if n.ID != "sidecar~198.51.100.1~client-1.scale~scale.svc.cluster.local" || n.Metadata["GENERATOR"] != "grpc" || n.Metadata["NAMESPACE"] != "scale" {
		t.Errorf("istiod node %+v", n)
	}
}

// The dialer of the convergence client reaches published pods on
// loopback and refuses every other address.
func TestLoopbackDialRefuses(t *testing.T) {
	for _, addr := range []string{"10.0.0.1:80", "198.18.0.1:8080", "127.0.0.1:80", "not-an-address"} {
		if conn, err := loopbackDial(t.Context(), addr); err == nil {
			conn.Close()
			t.Errorf("dialled %s", addr)
		}
	}
	if got := publishedAddr(netip.MustParseAddr("127.0.0.21")); got != netip.MustParseAddr("192.0.2.21") {
		t.Errorf("published address of 127.0.0.21: %s", got)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	port := netip.MustParseAddrPort(lis.Addr().String()).Port()
	conn, err := loopbackDial(t.Context(), netip.AddrPortFrom(publishedAddr(loopback), port).String())
	if err != nil {
		t.Fatalf("dial the published address of %s: %v", lis.Addr(), err)
	}
	conn.Close()
}

// A control plane's own share is each push's arrival minus when the same
// change reached the API server's plain watch.
func TestPushTrackerBeyondFloor(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(msec int) time.Time { return t0.Add(time.Duration(msec) * time.Millisecond) }
	floor, cp := newPushTracker(), newPushTracker()
	floor.watch(-1, 0)
	cp.watch(0, 0)
	cp.watch(1, 0)
	for _, tr := range []*pushTracker{floor, cp} {
		tr.wrote(0, 1, at(0))
		tr.wrote(0, 2, at(100))
		tr.wrote(0, 3, at(200))
	}
	floor.received(-1, 1, at(8))
	floor.received(-1, 2, at(105))
	// The floor never saw change 3 on its own (say the watch ended).
	cp.received(0, 1, at(10))
	cp.received(1, 2, at(150)) // 1 and 2 together
	cp.received(0, 3, at(230))
	got := []int{}
	for _, d := range cp.beyond(floor.arrivals()) {
		got = append(got, int(d/time.Millisecond))
	}
	// client 0: change 1 at 10 (floor 8) → 2, changes 2 and 3 at 230 →
	// 125 and left out; client 1: change 1 at 150 → 142, change 2 at 150
	// (floor 105) → 45.
	if want := []int{2, 45, 125, 142}; !slices.Equal(got, want) {
		t.Errorf("beyond the floor %v ms, want %v", got, want)
	}
}

// How Ballast grows is read between sizes that differ in one dimension,
// per 1k Services or per 100 clients; sizes that differ in both say
// nothing of either and get no headline.
func TestScaleGrowth(t *testing.T) {
	sizes := []scaleSize{{1000, 10, 100}, {5000, 10, 100}, {5000, 10, 1000}, {10000, 10, 1000}}
	s := scaleSection(scaleConfig{Sizes: sizes})
	for i, rss := range []float64{60, 100, 130, 180} {
		s.row(scaleRow(ballastControl{}, sizes[i])).add(colRSS, rss)
	}
	scaleHeadlines(s, sizes)
	got := map[string]string{}
	for _, h := range s.Headlines {
		if strings.HasPrefix(h.Text, "Ballast RSS MiB per") {
			got[h.Text] = strings.TrimPrefix(h.format(), h.Text+": ")
		}
	}
	want := map[string]string{
		"Ballast RSS MiB per 1k more Services (1k svc × 10, 100 clients → 5k svc × 10, 100 clients)":    "10.00",
		"Ballast RSS MiB per 100 more clients (5k svc × 10, 100 clients → 5k svc × 10, 1000 clients)":   "3.33",
		"Ballast RSS MiB per 1k more Services (5k svc × 10, 1000 clients → 10k svc × 10, 1000 clients)": "10.00",
	}
	if !maps.Equal(got, want) {
		t.Errorf("growth headlines:\n got %q\nwant %q", got, want)
	}
}
