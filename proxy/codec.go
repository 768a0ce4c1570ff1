package proxy

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
)

// frame is one gRPC message carried through the proxy undecoded. Its buffers
// come from grpc-go's pool: receiving takes a reference, sending hands that
// reference back to grpc-go, which frees it once written, so a message is
// never copied between the two sides.
type frame struct {
	data mem.BufferSlice
}

// free releases a message that was received but will not be sent.
func (f *frame) free() {
	f.data.Free()
	f.data = nil
}

// rawCodec is an encoding.CodecV2 that moves message bytes as they are,
// without knowing their type: the proxy never parses payloads.
type rawCodec struct{}

var _ encoding.CodecV2 = rawCodec{}

// Marshal hands the frame's buffers to grpc-go, which frees them after
// writing. The frame gives up its reference.
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	f, ok := v.(*frame)
	if !ok {
		return nil, fmt.Errorf("proxy codec: cannot marshal %T", v)
	}
	data := f.data
	f.data = nil
	return data, nil
}

// Unmarshal keeps a reference to the received buffers; grpc-go frees its
// own reference when Unmarshal returns.
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	f, ok := v.(*frame)
	if !ok {
		return fmt.Errorf("proxy codec: cannot unmarshal into %T", v)
	}
	data.Ref()
	f.data = data
	return nil
}

// Name is "proto" so that upstream requests say application/grpc+proto,
// which is what every gRPC server expects by default; a request that named
// another content-subtype keeps it (see forward).
func (rawCodec) Name() string { return "proto" }
