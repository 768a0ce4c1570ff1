package proxy

import (
	"cmp"
	"fmt"
	"time"
)

// Defaults for Limits fields left zero.
const (
	DefaultMaxConcurrentStreams = 100
	DefaultMaxHeaderListBytes   = 64 << 10
	DefaultIdleTimeout          = 5 * time.Minute
	DefaultMaxConnectionAge     = 30 * time.Minute
)

// Limits bound what one client connection may make the proxy hold or
// do, on every listener the proxy serves (explicit, transparent, inbound).
// With the fixed budgets below they bound the known HTTP/2 attacks: rapid
// reset, CONTINUATION and HPACK floods, control and empty frame floods,
// stream floods, idle connections.
type Limits struct {
	// MaxConcurrentStreams is advertised in SETTINGS; a stream over it is
	// refused (REFUSED_STREAM). It also sets how many streams a client
	// may reset before their responses end before the connection is
	// closed (see resetBudget).
	MaxConcurrentStreams uint32
	// MaxHeaderListBytes bounds a decoded request header or trailer block
	// (RFC 9113's size: names, values and 32 bytes per field) and is
	// advertised as SETTINGS_MAX_HEADER_LIST_SIZE. A request over it gets
	// RESOURCE_EXHAUSTED without reaching an upstream.
	MaxHeaderListBytes uint32
	// IdleTimeout closes a connection (GOAWAY NO_ERROR) that has had no
	// open stream for this long, counted from its accept; negative means
	// never.
	IdleTimeout time.Duration
	// MaxConnectionAge drains a connection (GOAWAY, as on shutdown) once
	// it is this old, give or take a tenth so that connections made
	// together do not all reconnect together: long-lived clients then
	// reconnect and are balanced again. Negative means never.
	MaxConnectionAge time.Duration
	// MaxConnectionAgeGrace, if positive, bounds how long streams may run
	// after that drain begins; zero lets them finish.
	MaxConnectionAgeGrace time.Duration
}

// Budgets of frames that cost the proxy work without moving a call
// forward. They are fixed rather than options: no well-behaved client
// comes near them.
const (
	// maxControlFrames bounds the PING, SETTINGS and PRIORITY frames, and
	// the RST_STREAM and WINDOW_UPDATE frames for closed streams, that a
	// client may send in a row without opening a stream or sending
	// request bytes: a client keeping a connection alive with a PING
	// every 10 s stays under it for hours.
	maxControlFrames = 1000
	// maxEmptyFrames bounds DATA frames without payload or END_STREAM,
	// and empty CONTINUATION frames, in a row: each costs as much to
	// handle as a full one and says nothing.
	maxEmptyFrames = 16
)

// withDefaults fills zero fields and checks the rest.
func (l Limits) withDefaults() (Limits, error) {
	l.MaxConcurrentStreams = cmp.Or(l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	l.MaxHeaderListBytes = cmp.Or(l.MaxHeaderListBytes, DefaultMaxHeaderListBytes)
	l.IdleTimeout = cmp.Or(l.IdleTimeout, DefaultIdleTimeout)
	l.MaxConnectionAge = cmp.Or(l.MaxConnectionAge, DefaultMaxConnectionAge)
	if l.MaxHeaderListBytes > 16<<20 {
		return l, fmt.Errorf("max header list bytes %d is over 16 MiB", l.MaxHeaderListBytes)
	}
	return l, nil
}
