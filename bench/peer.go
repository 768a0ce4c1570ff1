package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"text/template"
	"time"

	"google.golang.org/grpc"
)

// The peers are what a user would put in front of gRPC pods instead of
// Ballast, each set up for a fair fight: one worker, keepalive to the
// pods, no per-connection request limit, HTTP/2 on both sides, logs off.

// proxyConfig is what a peer's configuration is rendered from.
type proxyConfig struct {
	// Dir holds the peer's pid file, logs and temp files.
	Dir      string
	Listen   netip.AddrPort
	Backends []netip.AddrPort
	// For a TLS ingress (and only then): the name served, the certificate
	// and key files, and both in one file.
	Host                       string
	CertFile, KeyFile, PEMFile string
}

var nginxTemplate = template.Must(template.New("nginx").Parse(`# Rendered by ballast bench; runs in the foreground with everything under {{.Dir}}.
daemon off;
worker_processes 1;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path {{.Dir}}/client_body;
    proxy_temp_path {{.Dir}}/proxy;
    fastcgi_temp_path {{.Dir}}/fastcgi;
    uwsgi_temp_path {{.Dir}}/uwsgi;
    scgi_temp_path {{.Dir}}/scgi;

    # The client's connection: no limit on calls per connection (the
    # default, 1000, closes it every 1000 calls).
    keepalive_requests 1000000;
    keepalive_timeout 300s;

    upstream greeters {
{{- range .Backends}}
        server {{.}};
{{- end}}
        keepalive 32;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }

    server {
{{- if .CertFile}}
        # "listen ... http2": Debian 12's nginx (1.22) has no "http2 on".
        listen {{.Listen}} ssl http2;
        server_name {{.Host}};
        ssl_certificate {{.CertFile}};
        ssl_certificate_key {{.KeyFile}};
        ssl_protocols TLSv1.2 TLSv1.3;
{{- else}}
        listen {{.Listen}} http2;
{{- end}}
        location / {
            grpc_pass grpc://greeters;
        }
    }
}
`))

var haproxyTemplate = template.Must(template.New("haproxy").Parse(`# Rendered by ballast bench; runs in the foreground (-db), nothing written outside {{.Dir}}.
global
    nbthread 1
    maxconn 4096
{{- if .PEMFile}}
    ssl-default-bind-options ssl-min-ver TLSv1.2
{{- end}}

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s

frontend grpc
{{- if .PEMFile}}
    bind {{.Listen}} ssl crt {{.PEMFile}} alpn h2
{{- else}}
    bind {{.Listen}} proto h2
{{- end}}
    default_backend greeters

backend greeters
    balance roundrobin
    http-reuse always
{{- range $i, $b := .Backends}}
    server pod{{$i}} {{$b}} proto h2
{{- end}}
`))

func render(t *template.Template, c proxyConfig) (string, error) {
	var b bytes.Buffer
	if err := t.Execute(&b, c); err != nil {
		return "", fmt.Errorf("render %s config: %w", t.Name(), err)
	}
	return b.String(), nil
}

// nginx is nginx's grpc_pass with an upstream keepalive pool, one worker.
func nginx() path {
	return peerPath{name: "nginx", binary: "nginx", template: nginxTemplate, file: "nginx.conf",
		args: func(dir, conf string) []string {
			return []string{"-p", dir + "/", "-c", conf, "-e", filepath.Join(dir, "error.log")}
		}}
}

// haproxy is haproxy in HTTP mode, h2 on both sides, round robin, one thread.
func haproxy() path {
	return peerPath{name: "haproxy", binary: "haproxy", template: haproxyTemplate, file: "haproxy.cfg",
		args: func(_, conf string) []string { return []string{"-f", conf, "-db"} }}
}

type peerPath struct {
	name, binary, file string
	template           *template.Template
	args               func(dir, conf string) []string
	// tls: the client's side is TLS (ingressCert), terminated by the peer.
	tls bool
}

func (p peerPath) Name() string { return p.name }

func (p peerPath) Open(ctx context.Context, b *Bench, pods []*pod) (*route, error) {
	bin, err := b.peers.find(ctx, p.binary)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(b.dir, p.binary+"-")
	if err != nil {
		return nil, err
	}
	cfg := proxyConfig{Dir: dir, Backends: podAddrs(pods)}
	var dialOpts []grpc.DialOption
	if p.tls {
		cert, err := newIngressCert(dir)
		if err != nil {
			return nil, err
		}
		cfg.Host, cfg.CertFile, cfg.KeyFile, cfg.PEMFile = ingressHost, cert.certFile, cert.keyFile, cert.pemFile
		dialOpts = cert.dialOptions()
	}
	proc, ports, err := onFreePorts(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 1,
		func(ports []netip.AddrPort) (*process, error) {
			cfg.Listen = ports[0]
			conf, err := render(p.template, cfg)
			if err != nil {
				return nil, err
			}
			confPath := filepath.Join(dir, p.file)
			if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
				return nil, err
			}
			return startProcess(exec.Command(bin, p.args(dir, confPath)...), p.name)
		},
		func(proc *process, ports []netip.AddrPort) error {
			return waitServing(ctx, "passthrough:///"+ports[0].String(), proc, 10*time.Second, dialOpts...)
		})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	return &route{Target: "passthrough:///" + ports[0].String(), DialOptions: dialOpts, Proxy: proc, Close: proc.stop}, nil
}

// peers finds the peers' binaries, installing them once with apt-get when
// allowed and missing.
type peers struct {
	install  bool
	progress func(format string, args ...any)

	once       sync.Once
	installErr error
	installed  time.Duration
}

// find returns the path of binary, or an *unavailable saying why not.
func (ps *peers) find(ctx context.Context, binary string) (string, error) {
	if path, err := lookPeer(binary); err == nil {
		return path, nil
	}
	if !ps.install {
		return "", &unavailable{Status: "unavailable", Reason: binary + " is not installed (and installing was not asked for)"}
	}
	ps.once.Do(func() { ps.installErr = ps.aptInstall(ctx) })
	if ps.installErr != nil {
		return "", &unavailable{Status: "unavailable", Reason: ps.installErr.Error()}
	}
	path, err := lookPeer(binary)
	if err != nil {
		return "", &unavailable{Status: "unavailable", Reason: binary + " not found after apt-get install"}
	}
	return path, nil
}

// lookPeer looks in PATH and in /usr/sbin, which a non-root PATH may lack.
func lookPeer(binary string) (string, error) {
	if path, err := exec.LookPath(binary); err == nil {
		return path, nil
	}
	return exec.LookPath(filepath.Join("/usr/sbin", binary))
}

// aptInstall installs both peers in one apt-get run (running apt-get
// update first only if the install fails). Where an init system would
// start the packages' system services and no policy-rc.d forbids it, it
// refuses: the benchmark must never touch system services.
func (ps *peers) aptInstall(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("nginx/haproxy not installed and not root: apt-get install -y nginx haproxy")
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		if _, err := os.Stat("/usr/sbin/policy-rc.d"); err != nil {
			return errors.New("nginx/haproxy not installed; installing them here would start their system services: apt-get install nginx haproxy yourself")
		}
	}
	start := time.Now()
	ps.progress("peers: apt-get install -y nginx haproxy")
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "nginx", "haproxy")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install nginx haproxy: %w: %s", err, lastLine(out))
		}
		return nil
	}
	err := install()
	if err != nil {
		ps.progress("peers: install failed (%v); apt-get update and retry", err)
		if out, uerr := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); uerr != nil {
			return fmt.Errorf("apt-get update: %w: %s", uerr, lastLine(out))
		}
		err = install()
	}
	ps.installed = time.Since(start)
	ps.progress("peers: installed in %s", ps.installed.Round(time.Second))
	return err
}

func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// peerVersion is what the peer says its version is, for the report.
func peerVersion(binary string) string {
	path, err := lookPeer(binary)
	if err != nil {
		return "not installed"
	}
	out, _ := exec.Command(path, "-v").CombinedOutput()
	line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	switch {
	case strings.HasPrefix(line, "nginx version: "):
		return strings.TrimPrefix(line, "nginx version: ")
	case strings.HasPrefix(line, "HAProxy version "):
		return "haproxy/" + strings.Fields(strings.TrimPrefix(line, "HAProxy version "))[0]
	}
	return line
}
