package probe

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// listen opens a listener on loopback and returns it with its port.
func listen(t *testing.T) (net.Listener, int32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis, int32(lis.Addr().(*net.TCPAddr).Port)
}

// closedPort is a loopback port nothing listens on.
func closedPort(t *testing.T) int32 {
	lis, port := listen(t)
	lis.Close()
	return port
}

// serveHTTP runs h on loopback until the test ends.
func serveHTTP(t *testing.T, h http.Handler) int32 {
	lis, port := listen(t)
	srv := &http.Server{Handler: h}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return port
}

func TestHandler(t *testing.T) {
	tcpLis, tcpPort := listen(t)
	defer tcpLis.Close()
	down := closedPort(t)

	var seenHost, seenHeader string
	httpPort := serveHTTP(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/healthz":
			seenHost, seenHeader = r.Host, r.Header.Get("X-Probe")
		case "/moved":
			http.Redirect(w, r, "http://elsewhere.invalid/", http.StatusFound)
		case "/broken":
			http.Error(w, "broken", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	}))
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	tlsPort := int32(tlsSrv.Listener.Addr().(*net.TCPAddr).Port)

	grpcLis, grpcPort := listen(t)
	hs := health.NewServer()
	hs.SetServingStatus("up", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("down", healthpb.HealthCheckResponse_NOT_SERVING)
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(grpcLis)
	defer gs.Stop()

	tests := []struct {
		name     string
		spec     Spec
		wantCode int
		wantBody string
	}{
		{"tcp app up", Spec{TCPSocket: &TCPSocket{Port: tcpPort}}, 200, "ok"},
		{"tcp app down", Spec{TCPSocket: &TCPSocket{Port: down}}, 503, "connection refused"},
		{"http 200, host and headers sent", Spec{HTTPGet: &HTTPGet{Port: httpPort, Path: "/healthz",
			HTTPHeaders: []Header{{Name: "Host", Value: "app.example"}, {Name: "X-Probe", Value: "yes"}}}}, 200, "ok"},
		{"http redirect is success, not followed", Spec{HTTPGet: &HTTPGet{Port: httpPort, Path: "/moved"}}, 200, "ok"},
		{"http 500", Spec{HTTPGet: &HTTPGet{Port: httpPort, Path: "/broken"}}, 503, "500 Internal Server Error"},
		{"http 404", Spec{HTTPGet: &HTTPGet{Port: httpPort, Path: "nowhere"}}, 503, "404 Not Found"},
		{"http app down", Spec{HTTPGet: &HTTPGet{Port: down, Path: "/healthz"}}, 503, "connection refused"},
		{"https, certificate not checked", Spec{HTTPGet: &HTTPGet{Scheme: "HTTPS", Port: tlsPort}}, 200, "ok"},
		{"grpc serving, whole server", Spec{GRPC: &GRPC{Port: grpcPort}}, 200, "ok"},
		{"grpc serving service", Spec{GRPC: &GRPC{Port: grpcPort, Service: "up"}}, 200, "ok"},
		{"grpc NOT_SERVING", Spec{GRPC: &GRPC{Port: grpcPort, Service: "down"}}, 503, "NOT_SERVING"},
		{"grpc unknown service", Spec{GRPC: &GRPC{Port: grpcPort, Service: "other"}}, 503, "NotFound"},
		{"grpc app down", Spec{GRPC: &GRPC{Port: down}}, 503, "Unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.spec.Validate(); err != nil {
				t.Fatal(err)
			}
			path := Path("app", Readiness)
			rec := httptest.NewRecorder()
			reg := prometheus.NewRegistry()
			Handler(Set{path: tc.spec}, reg).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("%s: %d %q, want %d with %q", path, rec.Code, body, tc.wantCode, tc.wantBody)
			}
			result := "success"
			if tc.wantCode != http.StatusOK {
				result = "failure"
			}
			want := fmt.Sprintf("ballast_proxy_app_probes_total{probe=%q,result=%q} 1\n", path, result)
			if err := testutil.GatherAndCompare(reg, strings.NewReader("# HELP ballast_proxy_app_probes_total Runs of the app's rewritten probes by the sidecar, by probe path and result (success, failure).\n# TYPE ballast_proxy_app_probes_total counter\n"+want)); err != nil {
				t.Errorf("metrics: %v", err)
			}
		})
	}
	if seenHost != "app.example" || seenHeader != "yes" {
		t.Errorf("the app saw Host %q and X-Probe %q, want the probe's host and header", seenHost, seenHeader)
	}
}

func TestHandlerUnknownPath(t *testing.T) {
	rec := httptest.NewRecorder()
	Handler(Set{Path("app", Readiness): {TCPSocket: &TCPSocket{Port: 1}}}, nil).
		ServeHTTP(rec, httptest.NewRequest(http.MethodGet, Path("app", Liveness), nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("unknown probe path: %d, want 404", rec.Code)
	}
}

// An app that accepts and never answers fails the probe within its
// timeout, and a second request meanwhile waits for the first run.
func TestHandlerTimeout(t *testing.T) {
	release := make(chan struct{})
	port := serveHTTP(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	defer close(release)
	path := Path("app", Liveness)
	h := Handler(Set{path: {HTTPGet: &HTTPGet{Port: port}, TimeoutSeconds: 1}}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	codes := make(chan int, 2)
	for range 2 {
		go func() {
			resp, err := http.Get(srv.URL + path)
			if err != nil {
				codes <- 0
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range 2 {
		if code := <-codes; code != http.StatusServiceUnavailable {
			t.Fatalf("probe of a hung app: %d, want 503", code)
		}
	}
}

func TestParse(t *testing.T) {
	good := Set{Path("app", Readiness): {GRPC: &GRPC{Port: 50051}, TimeoutSeconds: 2}}
	got, err := Parse(good.String())
	if err != nil || got.String() != good.String() {
		t.Fatalf("Parse(%s) = %v, %v; want it back", good, got, err)
	}
	if s, err := Parse(""); err != nil || len(s) != 0 {
		t.Fatalf("Parse(\"\") = %v, %v; want an empty set", s, err)
	}
	for _, bad := range []struct{ in, want string }{
		{`{`, EnvVar},
		{`{"/ready":{"tcpSocket":{"port":1}}}`, `"/ready"`},
		{`{"/app-health/a/readyz":{}}`, "exactly one"},
		{`{"/app-health/a/readyz":{"tcpSocket":{"port":1},"grpc":{"port":2}}}`, "exactly one"},
		{`{"/app-health/a/readyz":{"tcpSocket":{"port":0}}}`, "port 0"},
		{`{"/app-health/a/readyz":{"httpGet":{"port":80,"scheme":"FTP"}}}`, "FTP"},
	} {
		if _, err := Parse(bad.in); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Parse(%s) = %v, want an error naming %s", bad.in, err, bad.want)
		}
	}
}
