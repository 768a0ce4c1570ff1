// Package serializer runs functions one at a time, in order, on a
// goroutine of its own: grpc-go's guarantee to balancers that calls into
// them never overlap, kept by the callers that run balancers outside a
// grpc.ClientConn (the sidecar's hosts, the consecutive-errors balancer).
package serializer

import (
	"sync"
)

// Serializer runs functions one at a time, in order, on its own goroutine:
// grpc-go's guarantee to balancers that calls into them never overlap.
type Serializer struct {
	mu     sync.Mutex
	queue  []func()
	wake   chan struct{}
	closed bool
	done   chan struct{}
}

// New starts a Serializer.
func New() *Serializer {
	s := &Serializer{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go s.run()
	return s
}

// Schedule queues f, and reports whether it did: after Close, f is
// dropped.
func (s *Serializer) Schedule(f func()) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	s.queue = append(s.queue, f)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

func (s *Serializer) run() {
	defer close(s.done)
	for range s.wake {
		for {
			s.mu.Lock()
			if len(s.queue) == 0 {
				closed := s.closed
				s.mu.Unlock()
				if closed {
					return
				}
				break
			}
			f := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.mu.Unlock()
			f()
		}
	}
}

// Close runs what is queued, then stops, and returns when it has.
func (s *Serializer) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	<-s.done
}
