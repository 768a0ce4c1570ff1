package client

import (
	"io"
	"log/slog"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ballast-dev/ballast/policy"
)

// fuzzTypes are the resource types FuzzDecode's kind picks from.
var fuzzTypes = []string{resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType, resourcev3.EndpointType}

// FuzzDecode gives the decoder of each resource type (kind picks it)
// arbitrary bytes as a control plane's response carries them, then what
// decoded through a client's store and delivery to watches, as a sidecar
// takes a response. Nothing panics; what decodes is bounded by its input
// (no entry comes from nothing, so a response cannot make the client hold
// more than it sent); and a resource that decodes alone is accepted in a
// response. The seeds (testdata/fuzz/FuzzDecode) are the golden cases'
// resources as the control plane renders them, one per type.
func FuzzDecode(f *testing.F) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		typeURL := fuzzTypes[int(kind)%len(fuzzTypes)]
		a := &anypb.Any{TypeUrl: typeURL, Value: data}
		v, err := decode(typeURL, a)
		if err != nil {
			return
		}
		entries := 0
		switch d := v.(type) {
		case *listener:
			if d.inline != nil {
				entries = len(d.inline.hosts)
			}
		case *routeConfig:
			for _, h := range d.hosts {
				entries += len(h.Domains) + len(h.Rules)
			}
		case *cluster:
		case *policy.Endpoints:
			entries = len(d.Endpoints)
		default:
			t.Fatalf("decode(%s) gave a %T", typeURL, v)
		}
		if entries > len(data) {
			t.Fatalf("%d bytes of %s decoded into %d entries", len(data), typeURL, entries)
		}
		c, err := New(Config{Server: "127.0.0.1:1", SidecarListeners: true, Log: log})
		if err != nil {
			t.Fatal(err)
		}
		stop := c.Watch("greeter.default:50051", func(Update) {})
		defer stop()
		if err := c.accept(typeURL, []*anypb.Any{a}); err != nil {
			t.Fatalf("%s decodes alone but its response is refused: %v", typeURL, err)
		}
	})
}
