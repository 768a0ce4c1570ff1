package proxy

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http2/hpack"
)

// Header blocks a gRPC proxy writes, as field lists.
var (
	respHeaders = []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}}
	okTrailers  = []hpack.HeaderField{{Name: "grpc-status", Value: "0"}, {Name: "grpc-message", Value: ""}}
	errTrailers = []hpack.HeaderField{{Name: ":status", Value: "200"}, {Name: "content-type", Value: "application/grpc"}, {Name: "grpc-status", Value: "14"}, {Name: "grpc-message", Value: "ballast proxy: upstream connection lost"}}
)

func request(timeout string) []hpack.HeaderField {
	return []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/helloworld.Greeter/SayHello"}, {Name: ":authority", Value: "greeter.default:50051"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		{Name: "grpc-timeout", Value: timeout},
	}
}

// encoderStep is one block written on a connection, or (limit set) the
// peer's SETTINGS_HEADER_TABLE_SIZE arriving before it.
type encoderStep struct {
	fields []hpack.HeaderField
	limit  *uint32
	// kept says the block must come from a kept block.
	kept bool
}

func limit(v uint32) encoderStep { return encoderStep{limit: &v} }

// TestHeaderEncoder: every block a headerEncoder writes is byte for byte
// what hpack.Encoder writes for the same sequence (so the connection's
// table stays the one the peer's decoder keeps, which decodes each block
// to its fields), and repeated blocks of table indexes come from the
// kept ones.
func TestHeaderEncoder(t *testing.T) {
	long := hpack.HeaderField{Name: "x-long", Value: strings.Repeat("v", 5000)}
	many := slices.Repeat([]hpack.HeaderField{{Name: "te", Value: "trailers"}}, maxKeptFields+1)
	tests := []struct {
		name  string
		steps []encoderStep
	}{
		{"responses repeat", []encoderStep{
			{fields: respHeaders}, {fields: okTrailers},
			{fields: respHeaders}, {fields: okTrailers},
			{fields: respHeaders, kept: true}, {fields: okTrailers, kept: true},
			{fields: respHeaders, kept: true}, {fields: okTrailers, kept: true},
		}},
		{"a literal forgets", []encoderStep{
			{fields: respHeaders}, {fields: respHeaders}, {fields: respHeaders, kept: true},
			{fields: request("1S")}, {fields: respHeaders}, {fields: respHeaders, kept: true},
			{fields: request("2S")}, {fields: request("2S")}, {fields: request("2S"), kept: true},
			{fields: request("3S")}, {fields: request("2S")}, {fields: respHeaders},
		}},
		{"several shapes kept", []encoderStep{
			{fields: respHeaders}, {fields: okTrailers}, {fields: errTrailers}, {fields: errTrailers[2:]},
			{fields: respHeaders}, {fields: okTrailers}, {fields: errTrailers}, {fields: errTrailers[2:], kept: true},
			{fields: respHeaders, kept: true}, {fields: okTrailers, kept: true}, {fields: errTrailers, kept: true}, {fields: errTrailers[2:], kept: true},
			{fields: respHeaders[:1]}, {fields: respHeaders[:1], kept: true}, {fields: okTrailers, kept: true},
		}},
		{"table shrunk and grown", []encoderStep{
			{fields: respHeaders}, {fields: respHeaders}, {fields: respHeaders, kept: true},
			limit(0), {fields: respHeaders}, {fields: respHeaders},
			limit(64), {fields: respHeaders}, {fields: respHeaders},
			limit(4096), {fields: respHeaders}, {fields: okTrailers}, {fields: respHeaders},
		}},
		{"sensitive, too large, empty", []encoderStep{
			{fields: okTrailers}, {fields: okTrailers}, {fields: okTrailers, kept: true},
			{fields: []hpack.HeaderField{{Name: "authorization", Value: "secret", Sensitive: true}}},
			{fields: []hpack.HeaderField{{Name: "authorization", Value: "secret", Sensitive: true}}},
			{fields: okTrailers},
			{fields: []hpack.HeaderField{long}}, {fields: []hpack.HeaderField{long}},
			{fields: nil}, {fields: nil},
			{fields: okTrailers}, {fields: okTrailers, kept: true},
		}},
		{"too many fields to keep", []encoderStep{
			{fields: many}, {fields: many}, {fields: many},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checkEncoder(t, tc.steps)
		})
	}
}

// checkEncoder writes steps with a headerEncoder and with hpack.Encoder
// and compares the blocks, decoding each with the peer's decoder.
func checkEncoder(t *testing.T, steps []encoderStep) {
	t.Helper()
	e := newHeaderEncoder()
	var refBuf bytes.Buffer
	ref := hpack.NewEncoder(&refBuf)
	dec := hpack.NewDecoder(4096, nil)
	for i, st := range steps {
		if st.limit != nil {
			e.setMaxDynamicTableSizeLimit(*st.limit)
			ref.SetMaxDynamicTableSizeLimit(*st.limit)
			continue
		}
		kept := e.keptBlock(st.fields) != nil
		got := e.encode(st.fields)
		refBuf.Reset()
		for _, hf := range st.fields {
			ref.WriteField(hf)
		}
		if !bytes.Equal(got, refBuf.Bytes()) {
			t.Fatalf("step %d: block %x, hpack.Encoder wrote %x", i, got, refBuf.Bytes())
		}
		if st.kept != kept {
			t.Errorf("step %d: from a kept block %v, want %v", i, kept, st.kept)
		}
		decoded, err := dec.DecodeFull(got)
		if err != nil {
			t.Fatalf("step %d: decoding %x: %v", i, got, err)
		}
		if !sameFields(decoded, st.fields) && (len(decoded) > 0 || len(st.fields) > 0) {
			t.Fatalf("step %d: decoded %v, wrote %v", i, decoded, st.fields)
		}
	}
}

func TestIndexesOnly(t *testing.T) {
	tests := []struct {
		name  string
		block []byte
		want  bool
	}{
		{"empty", nil, false},
		{"static index", []byte{0x88}, true},
		{"dynamic indexes", []byte{0xbe, 0xbf, 0xc0}, true},
		{"multi-byte index", []byte{0xff, 0x80, 0x01, 0x82}, true},
		{"multi-byte index cut short", []byte{0x82, 0xff, 0x80}, false},
		{"index then literal with indexing", []byte{0x88, 0x40, 0x01, 'a', 0x01, 'b'}, false},
		{"literal without indexing", []byte{0x00, 0x01, 'a', 0x01, 'b'}, false},
		{"never indexed", []byte{0x10, 0x01, 'a', 0x01, 'b'}, false},
		{"table size update", []byte{0x20, 0x88}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := indexesOnly(tc.block); got != tc.want {
				t.Errorf("indexesOnly(%x) = %v, want %v", tc.block, got, tc.want)
			}
		})
	}
}

// FuzzHeaderEncoder drives a headerEncoder with blocks drawn from a small
// vocabulary (so they repeat and hit the table) and table size changes,
// and holds it to hpack.Encoder's bytes and the decoder's fields.
func FuzzHeaderEncoder(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 0, 1, 2, 0, 1})
	f.Add([]byte{0, 0, 0xf0, 0, 0, 0xf3, 1, 1})
	vocab := []hpack.HeaderField{
		respHeaders[0], respHeaders[1], okTrailers[0], okTrailers[1], errTrailers[2], errTrailers[3],
		{Name: "grpc-timeout", Value: "1S"}, {Name: "grpc-timeout", Value: "2S"},
		{Name: "x-id", Value: strings.Repeat("i", 1000)}, {Name: "x-id", Value: strings.Repeat("j", 1000)},
		{Name: "authorization", Value: "secret", Sensitive: true},
	}
	limits := []uint32{0, 64, 1024, 4096}
	f.Fuzz(func(t *testing.T, ops []byte) {
		var steps []encoderStep
		for len(ops) > 0 {
			op := ops[0]
			ops = ops[1:]
			if op >= 0xf0 {
				steps = append(steps, limit(limits[int(op&0x0f)%len(limits)]))
				continue
			}
			// A block of up to 4 fields, op's bits choosing how many and
			// the next bytes which.
			n := int(op % 5)
			var fields []hpack.HeaderField
			for ; n > 0 && len(ops) > 0; n-- {
				fields = append(fields, vocab[int(ops[0])%len(vocab)])
				ops = ops[1:]
			}
			steps = append(steps, encoderStep{fields: fields})
		}
		// Whether a block is kept is not checked here: only the bytes.
		e := newHeaderEncoder()
		var refBuf bytes.Buffer
		ref := hpack.NewEncoder(&refBuf)
		dec := hpack.NewDecoder(4096, nil)
		for i, st := range steps {
			if st.limit != nil {
				e.setMaxDynamicTableSizeLimit(*st.limit)
				ref.SetMaxDynamicTableSizeLimit(*st.limit)
				continue
			}
			got := e.encode(st.fields)
			refBuf.Reset()
			for _, hf := range st.fields {
				ref.WriteField(hf)
			}
			if !bytes.Equal(got, refBuf.Bytes()) {
				t.Fatalf("step %d: block %x, hpack.Encoder wrote %x", i, got, refBuf.Bytes())
			}
			decoded, err := dec.DecodeFull(got)
			if err != nil {
				t.Fatalf("step %d: decoding %x: %v", i, got, err)
			}
			if len(decoded) != len(st.fields) || (len(decoded) > 0 && !sameFields(decoded, st.fields)) {
				t.Fatalf("step %d: decoded %v, wrote %v", i, decoded, st.fields)
			}
		}
	})
}

// BenchmarkHeaderEncoder encodes what a downstream connection writes for
// one unary call, response headers and trailers, in steady state: with
// hpack.Encoder (every field searched in the table) and with the
// headerEncoder (the blocks kept).
func BenchmarkHeaderEncoder(b *testing.B) {
	b.Run("hpack", func(b *testing.B) {
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		b.ReportAllocs()
		for b.Loop() {
			for _, fields := range [][]hpack.HeaderField{respHeaders, okTrailers} {
				buf.Reset()
				for _, hf := range fields {
					enc.WriteField(hf)
				}
			}
		}
	})
	b.Run("kept", func(b *testing.B) {
		e := newHeaderEncoder()
		b.ReportAllocs()
		for b.Loop() {
			e.encode(respHeaders)
			e.encode(okTrailers)
		}
	})
}
