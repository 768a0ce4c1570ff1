// Package connset tracks the open connections of a server that relays
// bytes, so that shutdown can close them.
package connset

import (
	"net"
	"sync"
)

// Set is a set of open connections. The zero Set is not usable: use New.
type Set struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// New returns an empty Set.
func New() *Set { return &Set{m: map[net.Conn]struct{}{}} }

// Add tracks c, or closes it and returns false once CloseAll has run.
func (s *Set) Add(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return false
	}
	s.m[c] = struct{}{}
	return true
}

// Remove closes c and stops tracking it.
func (s *Set) Remove(c net.Conn) {
	c.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, c)
}

// CloseAll closes every connection, and every later one Add is given.
func (s *Set) CloseAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.m {
		c.Close()
	}
}
