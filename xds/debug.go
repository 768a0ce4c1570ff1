package xds

import (
	"net"
	"net/http"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DebugHandler serves /debug/clients: what each client was last sent, as
// go-control-plane made it, before the namespace filter. That is every
// client's config, CSDS's content, so it is guarded as CSDS is (Guard).
func (s *Server) DebugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/clients", s.clients.serveDebug)
	return s.Guard(mux)
}

// Guard lets through to h only who may read every client's config. With
// credentials required (an Authenticator or a TrustDomain), a request
// from the process's own loopback passes (kubectl port-forward and exec
// arrive there, and whoever may use them in the control plane's namespace
// may read its Secrets anyway); any other needs the bearer token of a
// namespace in ReadAllNamespaces, as CSDS does. Without credentials
// required everyone reads everything, over xDS too.
func (s *Server) Guard(h http.Handler) http.Handler {
	if s.access == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
			if a, err := netip.ParseAddr(host); err == nil && a.Unmap().IsLoopback() {
				h.ServeHTTP(w, r)
				return
			}
		}
		var vals []string
		if v := r.Header.Get("Authorization"); v != "" {
			vals = []string{v}
		}
		c, err := s.authenticateToken(r.Context(), vals)
		if err == nil && !c.all {
			err = status.Errorf(codes.PermissionDenied, "%s shows every client's config; %s may not read it (only clients of namespaces %v)",
				r.URL.Path, c.id, s.cfg.ReadAllNamespaces)
		}
		if err != nil {
			code := http.StatusUnauthorized
			switch status.Code(err) {
			case codes.PermissionDenied:
				code = http.StatusForbidden
			case codes.Unavailable:
				code = http.StatusServiceUnavailable
			}
			http.Error(w, status.Convert(err).Message(), code)
			return
		}
		h.ServeHTTP(w, r)
	})
}
