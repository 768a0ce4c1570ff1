package bench

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	xdsclient "github.com/ballast-dev/ballast/xds/client"
)

// scaleConfig sizes scenario 5: for each size, a fresh control plane per
// run against an API server holding that many Services, Clients simulated
// proxyless clients (ClientsPerService on each watched Service), then
// Changes endpoint changes at ChangesPerSecond.
type scaleConfig struct {
	Sizes             []scaleSize
	ChangesPerSecond  float64
	Changes           int
	ClientsPerService int
	// SyncTimeout bounds the wait for every client's first endpoints, and
	// Drain the wait for the last pushes after the last change.
	SyncTimeout, Drain time.Duration
	// LoneChanges are written after the churn one at a time, each LoneGap
	// after the last has reached every subscribed client.
	LoneChanges int
	LoneGap     time.Duration
}

// scaleSize is one point of scenario 5.
type scaleSize struct {
	Services, Endpoints, Clients int
}

func (s scaleSize) String() string {
	return fmt.Sprintf("%s svc × %d, %d clients", thousands(s.Services), s.Endpoints, s.Clients)
}

// thousands writes 1000 as 1k and 5000 as 5k.
func thousands(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

const (
	colReady     = "ready_s"
	colSync      = "sync_ms"
	colSyncCPU   = "sync_cpu_s"
	colPushP50   = "push_p50_ms"
	colPushP99   = "push_p99_ms"
	colPushMax   = "push_max_ms"
	colPushes    = "pushes"
	colMissed    = "missed"
	colChurnCPU  = "churn_cores"
	colRSS       = "rss_mib"
	colAnon      = "anon_mib"
	colRetries   = "retries"
	colOwnP50    = "own_p50_ms"
	colOwnP99    = "own_p99_ms"
	colLoneP50   = "lone_p50_ms"
	colLoneMax   = "lone_max_ms"
	colFirstCall = "first_call_ms"
	colLastCall  = "last_call_ms"
)

func scaleSection(c scaleConfig) *Section {
	return &Section{
		ID:    "control-plane-scale",
		Title: "5. Control-plane scale",
		Description: fmt.Sprintf("Ballast's control plane (`ballast-control --kubeconfig`, the binary deploy/control runs; without it, `ballast control` from the full binary) and istiod (pilot-discovery built from istio.io/istio, run outside a cluster: "+
			"plaintext xDS on 127.0.0.1, no CA, no webhooks, the default mesh config) each watch the same real kube-apiserver holding N Services of one port, "+
			"each with one EndpointSlice of 10 ready endpoints. Each run starts the control plane afresh (never both at once) and connects simulated proxyless "+
			"clients: one ADS stream each, asking Listener → RouteConfiguration → Cluster → ClusterLoadAssignment for one Service as grpc-go does "+
			"(istiod's node metadata says GENERATOR=grpc), %d clients per watched Service. Then %d endpoint changes at %.0f/s (one endpoint of a watched "+
			"Service replaced per change), then %d lone changes, each %s after the last had reached every client.\n\n"+
			"- push: from sending the EndpointSlice update to the API server to a subscribed client receiving endpoints that include it, for every change "+
			"and every subscribed client, during the churn. Both run at their defaults, so istiod debounces: it pushes after 100 ms without a change "+
			"(PILOT_DEBOUNCE_AFTER) or, when changes keep coming, once the oldest has waited 10 s (PILOT_DEBOUNCE_MAX).\n"+
			"- beyond API watch: the same pushes minus when the change reached a plain watch on the API server in the benchmark: the control plane's "+
			"own share. The \"API server watch, floor\" row is that watch's own latency from the write.\n"+
			"- lone change: push latency of a change with no other change around it.\n"+
			"- ready: process start to its readiness endpoint; synced: all clients connecting at once to all holding endpoints (istiod admits 25 new "+
			"streams a second on 2 cores, PILOT_MAX_REQUESTS_PER_SECOND's default, and refuses the rest; a refused client retries with grpc-go's xDS "+
			"backoff, 1 s ×1.6 per failure ±20%%, counted in \"streams retried\"); sync CPU: the control plane's CPU from its start to then.\n"+
			"- churn cores: its CPU over the churn (and the drain of its last pushes) per second; RSS: the highest VmRSS sampled from the clients' "+
			"sync to the end of the churn, and its anonymous part (heap and stacks; the rest is mostly the pages of its own binary).\n\n"+
			"Why istiod's pushes take long here: besides the debounce, its gRPC generator answers every push, even one that only changes endpoints, "+
			"by regenerating and sending Listeners, Routes and Clusters (built by walking every Service it knows) to every connected gRPC client, "+
			"and EDS to the subscribed ones; Ballast sends only the changed ClusterLoadAssignment, only to its subscribers.\n\n"+
			"Targets, the project's standing goals, at the first size: Ballast push p50 ≤ %v ms, p99 ≤ %v ms, RSS ≤ %v of istiod's.",
			c.ClientsPerService, c.Changes, c.ChangesPerSecond, c.LoneChanges, c.LoneGap, goalPushP50, goalPushP99, goalControlRSS),
		Columns: []column{
			{colReady, "ready s", 2}, {colSync, "synced ms", 0}, {colRetries, "streams retried", 0}, {colSyncCPU, "sync CPU s", 2},
			{colPushP50, "push p50 ms", 1}, {colPushP99, "push p99 ms", 1}, {colPushMax, "push max ms", 1},
			{colPushes, "pushes measured", 0}, {colMissed, "missed", 0},
			{colOwnP50, "beyond API watch p50 ms", 1}, {colOwnP99, "beyond API watch p99 ms", 1},
			{colLoneP50, "lone change p50 ms", 1}, {colLoneMax, "lone change max ms", 1},
			{colChurnCPU, "churn cores", 2}, {colRSS, "RSS MiB", 1}, {colAnon, "anon RSS MiB", 1},
		},
		Charts: []chart{
			{File: "bench-cp-push-p99.png", Column: colPushP99, Title: "Endpoint change → client, p99", YLabel: "push latency p99 (ms)"},
			{File: "bench-cp-push-p50.png", Column: colPushP50, Title: "Endpoint change → client, p50", YLabel: "push latency p50 (ms)"},
			{File: "bench-cp-rss.png", Column: colRSS, Title: "Control-plane memory", YLabel: "RSS (MiB)"},
		},
	}
}

// scaleRow names a control plane's row at a size.
func scaleRow(cp controlPlane, size scaleSize) string {
	return fmt.Sprintf("%s (%s)", cp.Name(), size)
}

// floorRow names the row of the API server's own watch latency at a size.
func floorRow(size scaleSize) string {
	return fmt.Sprintf("API server watch, floor (%s)", size)
}

// scaleHeadlines adds the control-plane targets (at the first size) and the
// Ballast ÷ istiod ratios at every size.
func scaleHeadlines(s *Section, sizes []scaleSize) {
	for i, size := range sizes {
		ballast, istio := scaleRow(ballastControl{}, size), scaleRow(istiod{}, size)
		if i == 0 {
			s.value(fmt.Sprintf("Ballast push p50 ms (%s)", size), colPushP50, ballast, goalPushP50).Top = true
			s.value(fmt.Sprintf("Ballast push p99 ms (%s)", size), colPushP99, ballast, goalPushP99).Top = true
			s.ratio(fmt.Sprintf("Ballast RSS ÷ istiod's (%s)", size), colRSS, ballast, istio, goalControlRSS).Top = true
		}
		if size == goalLargeSize {
			s.value(fmt.Sprintf("Ballast push p99 ms (%s)", size), colPushP99, ballast, goalLargePushP99).Top = true
			s.value(fmt.Sprintf("Ballast RSS MiB (%s)", size), colRSS, ballast, goalLargeRSS).Top = true
		}
		s.value(fmt.Sprintf("istiod push p50 ms (%s)", size), colPushP50, istio, 0).Top = i == 0
		h := s.ratio(fmt.Sprintf("Ballast push p50 ÷ istiod's (%s)", size), colPushP50, ballast, istio, 0)
		h.Top, h.Digits = i == 0, 4
		h = s.ratio(fmt.Sprintf("Ballast lone change p50 ÷ istiod's (%s)", size), colLoneP50, ballast, istio, 0)
		h.Top, h.Digits = i == 0, 3
		s.ratio(fmt.Sprintf("Ballast anon RSS ÷ istiod's (%s)", size), colAnon, ballast, istio, 0).Top = i == 0
		s.value(fmt.Sprintf("Ballast push beyond the API server's watch, p50 ms (%s)", size), colOwnP50, ballast, 0).Top = i == 0
		s.ratio(fmt.Sprintf("Ballast push p99 ÷ istiod's (%s)", size), colPushP99, ballast, istio, 0).Digits = 4
		s.ratio(fmt.Sprintf("Ballast churn CPU ÷ istiod's (%s)", size), colChurnCPU, ballast, istio, 0)
		s.ratio(fmt.Sprintf("Ballast ready time ÷ istiod's (%s)", size), colReady, ballast, istio, 0)
		s.ratio(fmt.Sprintf("Ballast clients synced time ÷ istiod's (%s)", size), colSync, ballast, istio, 0).Digits = 3
		s.value(fmt.Sprintf("istiod lone change p50 ms (%s)", size), colLoneP50, istio, 0)
	}
	// How Ballast grows, between sizes that differ in one dimension.
	for i, from := range sizes {
		for _, to := range sizes[i+1:] {
			a, b := scaleRow(ballastControl{}, from), scaleRow(ballastControl{}, to)
			var per float64
			var unit string
			switch {
			case from.Endpoints != to.Endpoints:
				continue
			case from.Clients == to.Clients && from.Services != to.Services:
				per, unit = float64(to.Services-from.Services)/1000, "1k more Services"
			case from.Services == to.Services && from.Clients != to.Clients:
				per, unit = float64(to.Clients-from.Clients)/100, "100 more clients"
			default:
				continue
			}
			for _, m := range []struct{ what, column string }{{"RSS MiB", colRSS}, {"clients synced ms", colSync}, {"push p99 ms", colPushP99}} {
				h := s.growth(fmt.Sprintf("Ballast %s per %s (%s → %s)", m.what, unit, from, to), m.column, a, b, per)
				h.Top = m.column == colRSS
			}
		}
	}
}

// scaleState is what the scale scenario keeps across runs at one size:
// the last change number written, so every change of the whole benchmark
// has its own marker.
type scaleState struct {
	seq int
}

// measureScale runs one measurement of scenario 5 against a started
// control plane and records it in row (and the API server's own watch
// latency in floorRow): the clients' initial sync, the churn, then a few
// lone changes.
func (b *Bench) measureScale(ctx context.Context, rc *runningControl, api *apiServer, c scaleConfig, size scaleSize, st *scaleState, row, floorRow *row) error {
	watched := watchedServices(size.Clients, size.Services, c.ClientsPerService)
	if st.seq+c.Changes+c.LoneChanges > maxScaleChanges {
		return fmt.Errorf("change numbers would pass %d: fewer changes or runs", maxScaleChanges)
	}
	churn, lone := newPushTracker(), newPushTracker()
	// The API server's own share of the latency: a plain watch in this
	// process, timed against the same writes.
	floor := newPushTracker()
	for svc := range watched {
		floor.watch(-1-svc, svc)
	}
	cs := &clientSet{control: rc, size: size, watched: watched, trackers: []*pushTracker{churn, lone}}
	defer cs.stop()
	start := time.Now()
	cs.start(ctx)
	if err := cs.waitSynced(ctx, c.SyncTimeout); err != nil {
		// Its log says where it stood; the report's cell keeps to the figures.
		b.progress("control planes: %s: %v; its last output: %s", rc.name, err, rc.proc.tail())
		return err
	}
	syncTime := time.Since(start)
	syncRetries := cs.retries.Load()
	atSync, err := treeUsage(rc.proc.pid())
	if err != nil {
		return err
	}

	mem := sampleMemory(ctx, rc.proc.pid())
	stopWatch, err := api.watchMarkers(ctx, watched, func(svc, seq int, at time.Time) { floor.received(-1-svc, seq, at) })
	if err != nil {
		mem()
		return err
	}
	churnStart := time.Now()
	writeErrs, written := b.churn(ctx, api, c, size, watched, st, churn, floor)
	churnTime := time.Since(churnStart)
	err = cs.drain(ctx, c.Drain, churn, floor)
	busy := time.Since(churnStart)
	stopWatch()
	end, uerr := treeUsage(rc.proc.pid())
	peak := mem()
	if err != nil {
		return err
	}
	if uerr != nil {
		return uerr
	}
	if written == 0 {
		return fmt.Errorf("none of %d endpoint changes could be written to the API server", writeErrs)
	}
	lat := churn.sorted()
	if len(lat) == 0 {
		return fmt.Errorf("no client received any of %d changes within %s; %s's last output: %s", written, c.Drain, rc.name, rc.proc.tail())
	}
	own := churn.beyond(floor.arrivals())

	// Lone changes, each written once the last has reached every client
	// and the control plane has been quiet for a moment: the latency of a
	// change that comes alone.
	for n := range c.LoneChanges {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(c.LoneGap):
		}
		st.seq++
		svc := n % watched
		lone.wrote(svc, st.seq, time.Now())
		if err := api.setEndpoints(ctx, scaleNamespace, scaleServiceName(svc), scaleEndpoints(svc, size.Endpoints, st.seq)); err != nil {
			return err
		}
		if err := cs.drain(ctx, c.Drain, lone); err != nil {
			return err
		}
	}
	loneLat := lone.sorted()

	cores := (end.CPU - atSync.CPU).Seconds() / busy.Seconds()
	row.add(colReady, rc.ready.Seconds())
	row.add(colSync, ms(syncTime))
	row.add(colRetries, float64(syncRetries))
	row.add(colSyncCPU, atSync.CPU.Seconds())
	addPushes(row, lat, churn.pending())
	if len(own) > 0 {
		row.add(colOwnP50, ms(quantile(own, 0.50)))
		row.add(colOwnP99, ms(quantile(own, 0.99)))
	}
	if len(loneLat) > 0 {
		row.add(colLoneP50, ms(quantile(loneLat, 0.50)))
		row.add(colLoneMax, ms(loneLat[len(loneLat)-1]))
	}
	row.add(colChurnCPU, cores)
	row.add(colRSS, mib(max(peak.RSS, end.RSS)))
	row.add(colAnon, mib(peak.Anon))
	if fl := floor.sorted(); len(fl) > 0 {
		addPushes(floorRow, fl, floor.pending())
	}
	if n := cs.retries.Load() - syncRetries; n > 0 {
		b.progress("scale %s: %s: %d streams ended after the sync and were opened again; last because %v", size, rc.name, n, cs.lastRetryErr())
	}
	b.progress("scale %s: %-8s ready %.1fs, %d clients synced in %.0f ms (%d streams retried); %d changes in %.1fs (%d failed): "+
		"push p50 %.1f ms p99 %.1f ms max %.1f ms, %d missed (API watch p50 %.1f ms p99 %.1f ms; beyond it p50 %.1f ms p99 %.1f ms); "+
		"lone changes p50 %.1f ms; %.2f cores, RSS %.1f MiB (anon %.1f)",
		size, rc.name, rc.ready.Seconds(), size.Clients, ms(syncTime), syncRetries, written, churnTime.Seconds(), writeErrs,
		ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), ms(lat[len(lat)-1]), churn.pending(),
		ms(quantile(floor.sorted(), 0.5)), ms(quantile(floor.sorted(), 0.99)), ms(quantile(own, 0.5)), ms(quantile(own, 0.99)),
		ms(quantile(loneLat, 0.5)), cores, mib(max(peak.RSS, end.RSS)), mib(peak.Anon))
	return nil
}

// clientSet is the simulated clients of one measurement: client i watches
// Service i mod watched, and every endpoint list it receives is reported
// to every tracker.
type clientSet struct {
	control  *runningControl
	size     scaleSize
	watched  int
	trackers []*pushTracker

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	failed   chan error // a client that cannot go on (a response it cannot read)
	synced   chan struct{}
	nSynced  atomic.Int32
	answered atomic.Int32 // clients that got any response
	retries  atomic.Int32
	// lastRetry is why the last stream was opened again. The errors come
	// in several concrete types, which one atomic.Value cannot hold.
	lastRetry atomic.Pointer[error]
}

func (cs *clientSet) start(ctx context.Context) {
	ctx, cs.cancel = context.WithCancel(ctx)
	cs.failed, cs.synced = make(chan error, 1), make(chan struct{})
	for i := range cs.size.Clients {
		svc := i % cs.watched
		for _, t := range cs.trackers {
			t.watch(i, svc)
		}
		first := true // only the client's stream goroutine uses it
		answered := false
		cl, err := xdsclient.New(xdsclient.Config{
			Server: "passthrough:///" + cs.control.xds.String(),
			Node:   cs.control.node(fmt.Sprintf("client-%d", i), scaleNamespace).xdsNode(),
			Log:    slog.New(slog.DiscardHandler),
			OnResponse: func() {
				if !answered {
					answered = true
					cs.answered.Add(1)
				}
			},
			// A response the client cannot read is a fault of the control
			// plane, not of the connection: the measurement cannot go on.
			OnReject: func(typeURL string, err error) {
				select {
				case cs.failed <- fmt.Errorf("client %d: %s: %w", i, typeURL, err):
				default:
				}
			},
			OnStreamEnd: func(err error) {
				cs.retries.Add(1)
				cs.lastRetry.Store(&err)
			},
		})
		if err != nil {
			select {
			case cs.failed <- err:
			default:
			}
			continue
		}
		cl.Watch(cs.control.listener(scaleServiceName(svc), scaleNamespace, scalePort), func(u xdsclient.Update) {
			at := time.Now()
			var addrs []netip.Addr
			for _, e := range u.Endpoints {
				for _, ep := range e.Endpoints {
					addrs = append(addrs, ep.Address.Addr())
				}
			}
			if first && len(addrs) >= cs.size.Endpoints {
				first = false
				if int(cs.nSynced.Add(1)) == cs.size.Clients {
					close(cs.synced)
				}
			}
			for _, a := range addrs {
				if seq, ok := markerOf(a); ok {
					for _, t := range cs.trackers {
						t.received(i, seq, at)
					}
				}
			}
		})
		cs.wg.Go(func() {
			if err := cl.Run(ctx); err != nil {
				select {
				case cs.failed <- err:
				default:
				}
			}
		})
	}
}

// lastRetryErr is why the last stream was opened again; nil if none was.
func (cs *clientSet) lastRetryErr() error {
	if p := cs.lastRetry.Load(); p != nil {
		return *p
	}
	return nil
}

func (cs *clientSet) stop() {
	if cs.cancel != nil {
		cs.cancel()
	}
	cs.wg.Wait()
}

// waitSynced waits until every client holds its Service's endpoints.
func (cs *clientSet) waitSynced(ctx context.Context, timeout time.Duration) error {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-cs.synced:
		return nil
	case err := <-cs.failed:
		return err
	case <-t.C:
		return fmt.Errorf("%d of %d clients held endpoints after %s, %d had any response (%d streams retried, last because %v)",
			cs.nSynced.Load(), cs.size.Clients, timeout, cs.answered.Load(), cs.retries.Load(), cs.lastRetryErr())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain waits until nothing is pending in trackers, or timeout has
// passed (what is still pending then counts as missed).
func (cs *clientSet) drain(ctx context.Context, timeout time.Duration, trackers ...*pushTracker) error {
	pending := func() bool {
		for _, t := range trackers {
			if t.pending() > 0 {
				return true
			}
		}
		return false
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for pending() {
		select {
		case <-deadline.C:
			return nil
		case err := <-cs.failed:
			return err
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// addPushes records one run's push latencies (sorted) and misses.
func addPushes(row *row, sorted []time.Duration, missed int) {
	row.add(colPushP50, ms(quantile(sorted, 0.50)))
	row.add(colPushP99, ms(quantile(sorted, 0.99)))
	row.add(colPushMax, ms(sorted[len(sorted)-1]))
	row.add(colPushes, float64(len(sorted)))
	row.add(colMissed, float64(missed))
}

// churn writes c.Changes endpoint changes at c.ChangesPerSecond over the
// watched Services, in turn. A few writers send them, each owning a fixed
// share of the Services, so one Service's changes reach the API server in
// order while a slow write does not hold back the rate.
func (b *Bench) churn(ctx context.Context, api *apiServer, c scaleConfig, size scaleSize, watched int, st *scaleState, trackers ...*pushTracker) (failed, written int) {
	type change struct{ svc, seq int }
	const writers = 4
	queues := make([]chan change, writers)
	var (
		wg         sync.WaitGroup
		mu         sync.Mutex
		firstError error
	)
	for w := range queues {
		queues[w] = make(chan change, c.Changes)
		wg.Go(func() {
			for ch := range queues[w] {
				now := time.Now()
				for _, t := range trackers {
					t.wrote(ch.svc, ch.seq, now)
				}
				err := api.setEndpoints(ctx, scaleNamespace, scaleServiceName(ch.svc), scaleEndpoints(ch.svc, size.Endpoints, ch.seq))
				mu.Lock()
				if err != nil {
					for _, t := range trackers {
						t.forget(ch.svc, ch.seq)
					}
					failed++
					firstError = cmp.Or(firstError, err)
				} else {
					written++
				}
				mu.Unlock()
			}
		})
	}
	tick := time.NewTicker(time.Duration(float64(time.Second) / c.ChangesPerSecond))
	defer tick.Stop()
	for n := 0; n < c.Changes && ctx.Err() == nil; n++ {
		st.seq++
		svc := n % watched
		queues[svc%writers] <- change{svc, st.seq}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	for _, q := range queues {
		close(q)
	}
	wg.Wait()
	if firstError != nil {
		b.progress("scale: %d endpoint changes failed to write; first: %v", failed, firstError)
	}
	return failed, written
}
