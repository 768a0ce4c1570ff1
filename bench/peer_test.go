package bench

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/template"
)

// testTLSConfig is testConfig as a TLS ingress.
var testTLSConfig = func() proxyConfig {
	c := testConfig
	c.Host, c.CertFile, c.KeyFile, c.PEMFile = "greeter.example", "/tmp/ballast-bench-test/cert.pem",
		"/tmp/ballast-bench-test/key.pem", "/tmp/ballast-bench-test/both.pem"
	return c
}()

var testConfig = proxyConfig{
	Dir:    "/tmp/ballast-bench-test",
	Listen: netip.MustParseAddrPort("127.0.0.1:18080"),
	Backends: []netip.AddrPort{
		netip.MustParseAddrPort("127.0.0.20:40001"),
		netip.MustParseAddrPort("127.0.0.21:40002"),
		netip.MustParseAddrPort("127.0.0.22:40003"),
	},
}

// The peers' configurations say what makes the fight fair: one worker,
// HTTP/2 on both sides, keepalive to the pods without a request limit,
// loopback only, everything written under the temporary directory.
func TestPeerConfigs(t *testing.T) {
	tests := []struct {
		name     string
		template *template.Template
		config   proxyConfig
		want     []string
		wantNot  []string
	}{
		{
			name:     "nginx",
			template: nginxTemplate,
			config:   testConfig,
			want: []string{
				"daemon off;", "worker_processes 1;", "pid /tmp/ballast-bench-test/nginx.pid;",
				"error_log /tmp/ballast-bench-test/error.log", "access_log off;",
				"listen 127.0.0.1:18080 http2;", "grpc_pass grpc://greeters;",
				"server 127.0.0.20:40001;", "server 127.0.0.21:40002;", "server 127.0.0.22:40003;",
				"keepalive 32;", "keepalive_requests 1000000;", "keepalive_timeout 300s;",
			},
			wantNot: []string{"0.0.0.0", "/var/", "ssl"},
		},
		{
			name:     "nginx as TLS ingress",
			template: nginxTemplate,
			config:   testTLSConfig,
			want: []string{
				"worker_processes 1;", "listen 127.0.0.1:18080 ssl http2;", "server_name greeter.example;",
				"ssl_certificate /tmp/ballast-bench-test/cert.pem;", "ssl_certificate_key /tmp/ballast-bench-test/key.pem;",
				"ssl_protocols TLSv1.2 TLSv1.3;", "grpc_pass grpc://greeters;", "keepalive 32;",
			},
			wantNot: []string{"0.0.0.0", "/var/", "listen 127.0.0.1:18080 http2;"},
		},
		{
			name:     "haproxy",
			template: haproxyTemplate,
			config:   testConfig,
			want: []string{
				"nbthread 1", "mode http", "bind 127.0.0.1:18080 proto h2", "balance roundrobin",
				"server pod0 127.0.0.20:40001 proto h2", "server pod1 127.0.0.21:40002 proto h2",
				"server pod2 127.0.0.22:40003 proto h2", "http-reuse always",
			},
			wantNot: []string{"0.0.0.0", "/var/", "daemon", "ssl"},
		},
		{
			name:     "haproxy as TLS ingress",
			template: haproxyTemplate,
			config:   testTLSConfig,
			want: []string{
				"nbthread 1", "ssl-default-bind-options ssl-min-ver TLSv1.2",
				"bind 127.0.0.1:18080 ssl crt /tmp/ballast-bench-test/both.pem alpn h2",
				"server pod0 127.0.0.20:40001 proto h2", "http-reuse always",
			},
			wantNot: []string{"0.0.0.0", "/var/", "daemon", "bind 127.0.0.1:18080 proto h2"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := render(tt.template, tt.config)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(conf, w) {
					t.Errorf("config lacks %q:\n%s", w, conf)
				}
			}
			for _, w := range tt.wantNot {
				if strings.Contains(conf, w) {
					t.Errorf("config holds %q:\n%s", w, conf)
				}
			}
		})
	}
}

// Where the peers are installed, they accept the rendered configurations.
func TestPeerConfigsPassPeerCheck(t *testing.T) {
	tests := []struct {
		binary   string
		template *template.Template
		file     string
		check    func(dir, conf string) []string
	}{
		{"nginx", nginxTemplate, "nginx.conf", func(dir, conf string) []string {
			return []string{"-t", "-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, "error.log")}
		}},
		{"haproxy", haproxyTemplate, "haproxy.cfg", func(_, conf string) []string { return []string{"-c", "-f", conf} }},
	}
	for _, tt := range tests {
		t.Run(tt.binary, func(t *testing.T) {
			bin, err := lookPeer(tt.binary)
			if err != nil {
				t.Skipf("%s not installed", tt.binary)
			}
			dir := t.TempDir()
			c := testConfig
			c.Dir = dir
			conf, err := render(tt.template, c)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, tt.file)
			if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(bin, tt.check(dir, path)...).CombinedOutput(); err != nil {
				t.Fatalf("%s rejects its config: %v\n%s\n%s", tt.binary, err, out, conf)
			}
		})
	}
}
