package bench

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ScaleConfig sizes scenario 5: for each size, a fresh control plane per
// run against an API server holding that many Services, Clients simulated
// proxyless clients (ClientsPerService on each watched Service), then
// Changes endpoint changes at ChangesPerSecond.
type ScaleConfig struct {
	Sizes             []ScaleSize
	ChangesPerSecond  float64
	Changes           int
	ClientsPerService int
	// SyncTimeout bounds the wait for every client's first endpoints, and
	// Drain the wait for the last pushes after the last change.
	SyncTimeout, Drain time.Duration
}

// ScaleSize is one point of scenario 5.
type ScaleSize struct {
	Services, Endpoints, Clients int
}

func (s ScaleSize) String() string {
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
	colFirstCall = "first_call_ms"
	colLastCall  = "last_call_ms"
)

func scaleSection(c ScaleConfig) *Section {
	return &Section{
		ID:    "control-plane-scale",
		Title: "5. Control-plane scale",
		Description: fmt.Sprintf("Ballast's control plane (`ballast control --kubeconfig`) and istiod (pilot-discovery, built from istio.io/istio, run outside a cluster) "+
			"each watch the same real kube-apiserver holding N Services of one port, each with one EndpointSlice of 10 ready endpoints. "+
			"Each run starts the control plane afresh (never both at once), connects simulated proxyless clients (one ADS stream each, asking "+
			"Listener → RouteConfiguration → Cluster → ClusterLoadAssignment for one Service, as grpc-go does; istiod sees node metadata GENERATOR=grpc), "+
			"%d clients per watched Service, then writes %d endpoint changes at %.0f/s (one endpoint of a watched Service replaced per change). "+
			"Push latency: from sending the EndpointSlice update to the API server to a subscribed client receiving endpoints that include it, "+
			"for every change and every subscribed client. Ready: process start to its readiness endpoint; synced: all clients connected to all holding endpoints; "+
			"sync CPU: the control plane's CPU from its start to then; churn cores: its CPU over the churn (and the drain of its last pushes) per second of it; "+
			"RSS: the highest VmRSS sampled from the moment the clients were synced to the end of the churn. Both run at their defaults: istiod debounces pushes "+
			"(PILOT_DEBOUNCE_AFTER 100 ms). Targets (issue 4, at 1k Services × 10 endpoints and 100 clients): Ballast push p50 ≤ 10 ms, p99 ≤ 50 ms, "+
			"memory ≤ 1/5 of istiod's.", c.ClientsPerService, c.Changes, c.ChangesPerSecond),
		Columns: []Column{
			{colReady, "ready s", 2}, {colSync, "synced ms", 0}, {colSyncCPU, "sync CPU s", 2},
			{colPushP50, "push p50 ms", 1}, {colPushP99, "push p99 ms", 1}, {colPushMax, "push max ms", 1},
			{colPushes, "pushes measured", 0}, {colMissed, "missed", 0}, {colChurnCPU, "churn cores", 2}, {colRSS, "RSS MiB", 1}, {colAnon, "anon RSS MiB", 1},
		},
		Charts: []Chart{
			{File: "bench-cp-push-p99.png", Column: colPushP99, Title: "Endpoint change → client, p99", YLabel: "push latency p99 (ms)"},
			{File: "bench-cp-push-p50.png", Column: colPushP50, Title: "Endpoint change → client, p50", YLabel: "push latency p50 (ms)"},
			{File: "bench-cp-rss.png", Column: colRSS, Title: "Control-plane memory", YLabel: "RSS (MiB)"},
		},
	}
}

// scaleRow names a control plane's row at a size.
func scaleRow(cp ControlPlane, size ScaleSize) string {
	return fmt.Sprintf("%s (%s)", cp.Name(), size)
}

// floorRow names the row of the API server's own watch latency at a size.
func floorRow(size ScaleSize) string {
	return fmt.Sprintf("API server watch, floor (%s)", size)
}

// scaleHeadlines adds the targets of issue 4 (at the first size) and the
// Ballast ÷ istiod ratios at every size.
func scaleHeadlines(s *Section, sizes []ScaleSize) {
	for i, size := range sizes {
		ballast, istio := scaleRow(BallastControl(), size), scaleRow(Istiod(), size)
		if i == 0 {
			s.value(fmt.Sprintf("Ballast push p50 ms (%s)", size), colPushP50, ballast, 10).Top = true
			s.value(fmt.Sprintf("Ballast push p99 ms (%s)", size), colPushP99, ballast, 50).Top = true
			s.ratio(fmt.Sprintf("Ballast RSS ÷ istiod's (%s)", size), colRSS, ballast, istio, 0.2).Top = true
		}
		s.ratio(fmt.Sprintf("Ballast push p50 ÷ istiod's (%s)", size), colPushP50, ballast, istio, 0).Top = i == 0
		s.ratio(fmt.Sprintf("Ballast push p99 ÷ istiod's (%s)", size), colPushP99, ballast, istio, 0)
		s.ratio(fmt.Sprintf("Ballast churn CPU ÷ istiod's (%s)", size), colChurnCPU, ballast, istio, 0)
		s.ratio(fmt.Sprintf("Ballast ready time ÷ istiod's (%s)", size), colReady, ballast, istio, 0)
		s.value(fmt.Sprintf("istiod push p50 ms (%s)", size), colPushP50, istio, 0)
	}
}

// scaleState is what the scale scenario keeps across runs at one size:
// the last change number written, so every change of the whole benchmark
// has its own marker.
type scaleState struct {
	seq int
}

// measureScale runs one measurement of scenario 5 against a started
// control plane and records it in row.
func (b *Bench) measureScale(ctx context.Context, rc *runningControl, api *apiServer, c ScaleConfig, size ScaleSize, st *scaleState, row, floorRow *Row) error {
	watched := watchedServices(size.Clients, size.Services, c.ClientsPerService)
	if st.seq+c.Changes > maxScaleChanges {
		return fmt.Errorf("change numbers would pass %d: fewer changes or runs", maxScaleChanges)
	}
	tracker := newPushTracker()
	clientCtx, stopClients := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopClients()
		wg.Wait()
	}()
	streamErr := make(chan error, 1)
	allSynced := make(chan struct{})
	var synced atomic.Int32
	start := time.Now()
	for i := range size.Clients {
		svc := i % watched
		tracker.watch(i, svc)
		first := true // only the client's stream goroutine reads it
		cl := &adsClient{
			server:   rc.xds,
			node:     rc.node(fmt.Sprintf("client-%d", i), scaleNamespace).proto(),
			listener: rc.listener(scaleServiceName(svc), scaleNamespace, scalePort),
			onEndpoints: func(addrs []netip.Addr, at time.Time) {
				if first && len(addrs) >= size.Endpoints {
					first = false
					if int(synced.Add(1)) == size.Clients {
						close(allSynced)
					}
				}
				for _, a := range addrs {
					if seq, ok := markerOf(a); ok {
						tracker.received(i, seq, at)
					}
				}
			},
		}
		wg.Go(func() {
			if err := cl.run(clientCtx); err != nil {
				select {
				case streamErr <- err:
				default:
				}
			}
		})
	}
	syncWait := time.NewTimer(c.SyncTimeout)
	defer syncWait.Stop()
	select {
	case <-allSynced:
	case err := <-streamErr:
		return err
	case <-syncWait.C:
		return fmt.Errorf("%d of %d clients held endpoints after %s; %s's last output: %s", synced.Load(), size.Clients, c.SyncTimeout, rc.name, rc.proc.tail())
	case <-ctx.Done():
		return ctx.Err()
	}
	syncTime := time.Since(start)
	atSync, err := TreeUsage(rc.proc.pid())
	if err != nil {
		return err
	}

	mem := sampleMemory(ctx, rc.proc.pid())
	// The API server's own share of the latency: a plain watch in this
	// process, timed against the same writes.
	floor := newPushTracker()
	for svc := range watched {
		floor.watch(-1-svc, svc)
	}
	stopWatch, err := api.watchMarkers(ctx, watched, func(svc, seq int, at time.Time) { floor.received(-1-svc, seq, at) })
	if err != nil {
		mem()
		return err
	}
	churnStart := time.Now()
	writeErrs, written := b.churn(ctx, api, c, size, watched, st, tracker, floor)
	churnTime := time.Since(churnStart)
	drain := time.NewTimer(c.Drain)
	defer drain.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for tracker.pending() > 0 || floor.pending() > 0 {
		select {
		case <-drain.C:
			break wait
		case err := <-streamErr:
			stopWatch()
			mem()
			return err
		case <-ctx.Done():
			stopWatch()
			mem()
			return ctx.Err()
		case <-tick.C:
		}
	}
	busy := time.Since(churnStart)
	stopWatch()
	end, err := TreeUsage(rc.proc.pid())
	peak := mem()
	if err != nil {
		return err
	}
	if writeErrs > 0 && written == 0 {
		return fmt.Errorf("every endpoint change failed to write")
	}
	lat := tracker.sorted()
	if len(lat) == 0 {
		return fmt.Errorf("no client received any of %d changes within %s; %s's last output: %s", written, c.Drain, rc.name, rc.proc.tail())
	}
	cores := (end.CPU - atSync.CPU).Seconds() / busy.Seconds()
	row.add(colReady, rc.ready.Seconds())
	row.add(colSync, ms(syncTime))
	row.add(colSyncCPU, atSync.CPU.Seconds())
	addPushes(row, lat, tracker.pending())
	row.add(colChurnCPU, cores)
	row.add(colRSS, mib(max(peak.RSS, end.RSS)))
	row.add(colAnon, mib(peak.Anon))
	if fl := floor.sorted(); len(fl) > 0 {
		addPushes(floorRow, fl, floor.pending())
	}
	b.progress("scale %s: %-8s ready %.1fs, %d clients synced in %.0f ms; %d changes in %.1fs (%d failed): push p50 %.1f ms p99 %.1f ms max %.1f ms, %d missed "+
		"(API watch p50 %.1f ms p99 %.1f ms); %.2f cores, RSS %.1f MiB (anon %.1f)",
		size, rc.name, rc.ready.Seconds(), size.Clients, ms(syncTime), written, churnTime.Seconds(), writeErrs,
		ms(quantile(lat, 0.5)), ms(quantile(lat, 0.99)), ms(lat[len(lat)-1]), tracker.pending(),
		ms(quantile(floor.sorted(), 0.5)), ms(quantile(floor.sorted(), 0.99)), cores, mib(max(peak.RSS, end.RSS)), mib(peak.Anon))
	return nil
}

// addPushes records one run's push latencies (sorted) and misses.
func addPushes(row *Row, sorted []time.Duration, missed int) {
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
func (b *Bench) churn(ctx context.Context, api *apiServer, c ScaleConfig, size ScaleSize, watched int, st *scaleState, trackers ...*pushTracker) (failed, written int) {
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
					firstError = cmpOrErr(firstError, err)
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

func cmpOrErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
