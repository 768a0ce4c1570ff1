package proxy

import (
	"bytes"

	"golang.org/x/net/http2/hpack"
)

// headerEncoder encodes the header blocks written on one connection, in
// the order they are written (its HPACK dynamic table is the
// connection's). Most blocks a gRPC proxy writes repeat: a call's
// response headers and trailers are the same fields call after call, and
// once the table holds them each encodes as table indexes alone. Such a
// block leaves the dynamic table as it was (RFC 7541 §6.1: an indexed
// field adds nothing), so its bytes decode to the same fields for as long
// as the table does not change: they are kept, and a block with the same
// fields is written from them without searching the table again field by
// field (hashing every name and value) as hpack.Encoder does. Any block
// that changes the table, and any change of its size, forgets them all.
type headerEncoder struct {
	enc *hpack.Encoder
	buf bytes.Buffer
	// kept are blocks of indexes only, encoded since the table last
	// changed; next is the slot the next one takes.
	kept [keptBlocks]keptBlock
	next int
}

// keptBlocks is how many blocks a connection keeps: a downstream
// connection writes response headers and trailers in turn, a few shapes
// of each (trailers-only responses, errors) beside the usual.
const keptBlocks = 4

// maxKeptFields bounds the fields of a kept block: a peer could send a
// block of one index repeated thousands of times, which the proxy
// forwards, and keeping its fields would hold that much memory per
// connection for nothing.
const maxKeptFields = 32

// keptBlock is a block and its fields; an empty block is none (a kept
// block holds at least one index).
type keptBlock struct {
	fields []hpack.HeaderField
	block  []byte
}

func newHeaderEncoder() *headerEncoder {
	e := &headerEncoder{}
	e.enc = hpack.NewEncoder(&e.buf)
	return e
}

// encode returns the header block of fields, valid until the next call.
func (e *headerEncoder) encode(fields []hpack.HeaderField) []byte {
	if block := e.keptBlock(fields); block != nil {
		return block
	}
	e.buf.Reset()
	for _, hf := range fields {
		e.enc.WriteField(hf)
	}
	block := e.buf.Bytes()
	if !indexesOnly(block) {
		e.forget()
		return block
	}
	if len(fields) > maxKeptFields {
		return block
	}
	k := &e.kept[e.next]
	e.next = (e.next + 1) % keptBlocks
	k.fields = append(k.fields[:0], fields...)
	k.block = append(k.block[:0], block...)
	return k.block
}

// keptBlock returns the kept block of fields, nil if none.
func (e *headerEncoder) keptBlock(fields []hpack.HeaderField) []byte {
	for i := range e.kept {
		if k := &e.kept[i]; len(k.block) > 0 && sameFields(k.fields, fields) {
			return k.block
		}
	}
	return nil
}

// setMaxDynamicTableSizeLimit applies the peer's SETTINGS_HEADER_TABLE_SIZE,
// which may shrink the table (and evict from it) at once.
func (e *headerEncoder) setMaxDynamicTableSizeLimit(v uint32) {
	e.enc.SetMaxDynamicTableSizeLimit(v)
	e.forget()
}

// forget drops the kept blocks: the table changed, so their indexes may
// name other fields now.
func (e *headerEncoder) forget() {
	for i := range e.kept {
		e.kept[i].block = e.kept[i].block[:0]
		clear(e.kept[i].fields) // the strings may be large: let them go
		e.kept[i].fields = e.kept[i].fields[:0]
	}
}

// sameFields reports whether a and b are the same fields in the same
// order (Sensitive included: it changes the representation).
func sameFields(a, b []hpack.HeaderField) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// indexesOnly reports whether block is a non-empty run of indexed header
// field representations (RFC 7541 §6.1: a 1 bit, then the index as an
// integer with a 7-bit prefix), which leave the dynamic table unchanged.
// Anything else (a literal, a table size update) may change it.
func indexesOnly(block []byte) bool {
	if len(block) == 0 {
		return false
	}
	for i := 0; i < len(block); {
		b := block[i]
		i++
		if b&0x80 == 0 {
			return false
		}
		if b&0x7f != 0x7f {
			continue
		}
		// The index continues in bytes of 7 bits while their top bit
		// is set (§5.1).
		for {
			if i >= len(block) {
				return false
			}
			b = block[i]
			i++
			if b&0x80 == 0 {
				break
			}
		}
	}
	return true
}
