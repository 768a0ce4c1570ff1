package bench

import (
	"slices"
	"sync"
	"time"
)

// pushTracker matches the endpoint changes the benchmark writes to the API
// server with what the simulated clients receive, and measures the push
// latency: from the moment a change is sent to the API server to the
// moment a client subscribed to that Service receives endpoints that
// include it. Changes are numbered; a client that receives change n of its
// Service has every earlier change of that Service too (a control plane
// may fold several into one push, and then each of them arrived then).
type pushTracker struct {
	mu sync.Mutex
	// changes are each Service's changes, in the order they were written
	// (one writer per Service keeps that order the API server's).
	changes map[int][]writtenChange
	// service is the Service each client watches; done is how many of its
	// Service's changes it has received.
	service map[int]int
	done    map[int]int
	// samples are the measured pushes, one per change and subscribed
	// client.
	samples []pushSample
}

type pushSample struct {
	seq     int
	at      time.Time // when the client received it
	latency time.Duration
}

type writtenChange struct {
	seq int
	at  time.Time
}

func newPushTracker() *pushTracker {
	return &pushTracker{changes: map[int][]writtenChange{}, service: map[int]int{}, done: map[int]int{}}
}

// watch says client watches service.
func (t *pushTracker) watch(client, service int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.service[client] = service
}

// wrote records that change seq of service is about to be sent, at at.
// Changes of one Service must be recorded in increasing seq order.
func (t *pushTracker) wrote(service, seq int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes[service] = append(t.changes[service], writtenChange{seq, at})
}

// forget drops change seq of service, which could not be written.
func (t *pushTracker) forget(service, seq int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.changes[service] = slices.DeleteFunc(t.changes[service], func(c writtenChange) bool { return c.seq == seq })
}

// received records that client received, at at, endpoints carrying
// change seq of its Service.
func (t *pushTracker) received(client, seq int, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	svc, ok := t.service[client]
	if !ok {
		return
	}
	list := t.changes[svc]
	i := t.done[client]
	for ; i < len(list) && list[i].seq <= seq; i++ {
		t.samples = append(t.samples, pushSample{list[i].seq, at, at.Sub(list[i].at)})
	}
	t.done[client] = i
}

// pending is how many (change, subscribed client) pairs have not arrived.
func (t *pushTracker) pending() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for client, svc := range t.service {
		n += len(t.changes[svc]) - t.done[client]
	}
	return n
}

// sorted returns the measured latencies, ascending.
func (t *pushTracker) sorted() []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]time.Duration, len(t.samples))
	for i, s := range t.samples {
		out[i] = s.latency
	}
	slices.Sort(out)
	return out
}

// arrivals is when each change first arrived anywhere.
func (t *pushTracker) arrivals() map[int]time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[int]time.Time, len(t.samples))
	for _, s := range t.samples {
		if first, ok := out[s.seq]; !ok || s.at.Before(first) {
			out[s.seq] = s.at
		}
	}
	return out
}

// beyond is, for every push measured, how much later than floor (when
// the same change arrived elsewhere: the API server's own watch) it
// arrived, ascending; changes floor never saw are left out. It is the
// control plane's own share of the latency.
func (t *pushTracker) beyond(floor map[int]time.Time) []time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []time.Duration
	for _, s := range t.samples {
		if f, ok := floor[s.seq]; ok {
			out = append(out, s.at.Sub(f))
		}
	}
	slices.Sort(out)
	return out
}

// watchedServices is how many Services clients are spread over so that
// each watched Service has about perService subscribers: a change then
// reaches perService clients, as one Service's change reaches the pods
// that call it.
func watchedServices(clients, services, perService int) int {
	return min(services, max(1, clients/max(1, perService)))
}
