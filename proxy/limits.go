package proxy

import (
	"cmp"
	"fmt"
)

// Defaults for Limits fields left zero.
const (
	DefaultMaxConcurrentStreams = 100
	DefaultMaxHeaderListBytes   = 64 << 10
)

// Limits bound what one client connection may make the proxy hold or
// do, on every listener the proxy serves (explicit, transparent, inbound).
// They bound the known HTTP/2 attacks (HPACK bombs, stream floods).
type Limits struct {
	// MaxConcurrentStreams is advertised in SETTINGS; a stream over it is
	// refused (REFUSED_STREAM).
	MaxConcurrentStreams uint32
	// MaxHeaderListBytes bounds a decoded request header or trailer block
	// (RFC 9113's size: names, values and 32 bytes per field) and is
	// advertised as SETTINGS_MAX_HEADER_LIST_SIZE. A request over it gets
	// RESOURCE_EXHAUSTED without reaching an upstream.
	MaxHeaderListBytes uint32
}

// withDefaults fills zero fields and checks the rest.
func (l Limits) withDefaults() (Limits, error) {
	l.MaxConcurrentStreams = cmp.Or(l.MaxConcurrentStreams, DefaultMaxConcurrentStreams)
	l.MaxHeaderListBytes = cmp.Or(l.MaxHeaderListBytes, DefaultMaxHeaderListBytes)
	if l.MaxHeaderListBytes > 16<<20 {
		return l, fmt.Errorf("max header list bytes %d is over 16 MiB", l.MaxHeaderListBytes)
	}
	return l, nil
}
