package devcluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"

	"github.com/ballast-dev/ballast/image"
)

// HostImage is the repository of the one image the nodes do not pull: the
// machine's own root filesystem, its programs found on the host's PATH
// (e.g. host:sh running `sh -c ...`). Tests use it for throwaway pods
// that need a shell; everything Ballast ships runs from its OCI image.
const HostImage = "host"

// isHostImage reports whether ref names HostImage (any tag).
func isHostImage(ref string) bool {
	repo, _, _ := strings.Cut(ref, ":")
	return repo == HostImage
}

// pulledImage is an image a node has pulled and unpacked.
type pulledImage struct {
	ref    string // as the pod names it
	id     string // repository@digest, the container status' imageID
	root   string // the unpacked root filesystem, shared by its containers
	config v1.Config
}

// imageStore pulls images from the cluster's registry and unpacks each
// once per manifest digest (image.RootFS) under dir, which Stop removes
// with the run directory.
type imageStore struct {
	registry *imageRegistry
	dir      string

	mu     sync.Mutex
	pulled map[string]*pulledImage // by reference, for IfNotPresent
	locks  map[string]*sync.Mutex  // one pull at a time per reference
}

func newImageStore(r *imageRegistry, dir string) *imageStore {
	return &imageStore{registry: r, dir: dir, pulled: map[string]*pulledImage{}, locks: map[string]*sync.Mutex{}}
}

// pull returns the image ref names for this machine's platform: the one
// pulled before unless the policy is Always (then the registry is asked
// again, as the kubelet does, and a moved tag gives the new image).
func (s *imageStore) pull(ctx context.Context, ref string, policy corev1.PullPolicy) (*pulledImage, error) {
	s.mu.Lock()
	l, ok := s.locks[ref]
	if !ok {
		l = &sync.Mutex{}
		s.locks[ref] = l
	}
	s.mu.Unlock()
	l.Lock()
	defer l.Unlock()
	s.mu.Lock()
	have := s.pulled[ref]
	s.mu.Unlock()
	if have != nil && policy != corev1.PullAlways {
		return have, nil
	}
	if policy == corev1.PullNever {
		return nil, fmt.Errorf("image %q is not present with pull policy %q", ref, policy)
	}
	m, err := s.registry.mirror(ref)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(m, remote.WithContext(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}))
	if err != nil {
		return nil, fmt.Errorf("pull %s (from %s): %w", ref, m, err)
	}
	dg, err := img.Digest()
	if err != nil {
		return nil, err
	}
	if have != nil && have.id == m.Context().Name()+"@"+dg.String() {
		return have, nil
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", ref, err)
	}
	root, err := image.RootFS(s.dir, img)
	if err != nil {
		return nil, fmt.Errorf("image %s: unpack: %w", ref, err)
	}
	p := &pulledImage{ref: ref, id: m.Context().Name() + "@" + dg.String(), root: root, config: cf.Config}
	s.mu.Lock()
	s.pulled[ref] = p
	s.mu.Unlock()
	return p, nil
}

// argv is a container's command line as Kubernetes builds it from the
// image's config: command replaces the entrypoint (and drops the image's
// cmd), args replace the image's cmd.
func (p *pulledImage) argv(c corev1.Container) ([]string, error) {
	var argv []string
	switch {
	case len(c.Command) > 0:
		argv = append(append(argv, c.Command...), c.Args...)
	case len(c.Args) > 0:
		argv = append(append(argv, p.config.Entrypoint...), c.Args...)
	default:
		argv = append(append(argv, p.config.Entrypoint...), p.config.Cmd...)
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("image %s has no entrypoint and the container no command", p.ref)
	}
	prog, err := p.program(argv[0], p.env(nil))
	if err != nil {
		return nil, err
	}
	argv[0] = prog
	return argv, nil
}

// program is the path in the image of the program name: a path as it is,
// a bare name looked up on the PATH of env, as execvp would inside the
// container. It must be an executable file of the image.
func (p *pulledImage) program(prog string, env []string) (string, error) {
	candidates := []string{prog}
	if !strings.Contains(prog, "/") {
		candidates = nil
		for _, dir := range strings.Split(lookupEnv(env, "PATH"), ":") {
			if dir != "" {
				candidates = append(candidates, path.Join(dir, prog))
			}
		}
	}
	for _, c := range candidates {
		if !path.IsAbs(c) {
			continue
		}
		host, err := p.resolve(c)
		if err != nil {
			continue
		}
		if info, err := os.Stat(host); err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", fmt.Errorf("image %s has no program %q (PATH %s)", p.ref, prog, lookupEnv(env, "PATH"))
}

// resolve is the host path of the image's file at path, its symlinks
// followed inside the image's root.
func (p *pulledImage) resolve(in string) (string, error) {
	cur := "/"
	parts := strings.Split(strings.TrimPrefix(path.Clean(in), "/"), "/")
	for hops := 0; len(parts) > 0; {
		next := path.Join(cur, parts[0])
		parts = parts[1:]
		host := filepath.Join(p.root, filepath.FromSlash(next))
		info, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if info.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 16 {
			return "", fmt.Errorf("%s: too many symlinks", in)
		}
		target, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		parts = append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return filepath.Join(p.root, filepath.FromSlash(cur)), nil
}

// env is the image's environment with the container's after it; HOME is
// / unless one of them says otherwise, as container runtimes give a user
// the image has no passwd entry for.
func (p *pulledImage) env(container []string) []string {
	env := append([]string{"HOME=/"}, p.config.Env...)
	return append(env, container...)
}

// user is the image's USER as numeric ids: "uid" or "uid:gid" (names
// would need the image's /etc/passwd, which Ballast's images do not have).
func (p *pulledImage) user() (uid, gid int64, set bool, err error) {
	u := p.config.User
	if u == "" {
		return 0, 0, false, nil
	}
	us, gs, hasGroup := strings.Cut(u, ":")
	if uid, err = strconv.ParseInt(us, 10, 64); err != nil {
		return 0, 0, false, fmt.Errorf("image %s: user %q: only numeric ids are supported", p.ref, u)
	}
	if hasGroup {
		if gid, err = strconv.ParseInt(gs, 10, 64); err != nil {
			return 0, 0, false, fmt.Errorf("image %s: user %q: only numeric ids are supported", p.ref, u)
		}
	}
	return uid, gid, true, nil
}

// lookupEnv is the last value of key in env (KEY=value entries).
func lookupEnv(env []string, key string) string {
	v := ""
	for _, e := range env {
		if k, val, ok := strings.Cut(e, "="); ok && k == key {
			v = val
		}
	}
	return v
}

// hostTools are the absolute paths of the programs the launcher runs on
// the host before the container's program: a container's PATH is its
// image's, which need not have them.
type hostTools struct {
	sh, mount, mkdir, touch, ln, hostname, chroot, setpriv string
}

func findHostTools() (hostTools, error) {
	var t hostTools
	for _, x := range []struct {
		dst  *string
		name string
	}{{&t.sh, "sh"}, {&t.mount, "mount"}, {&t.mkdir, "mkdir"}, {&t.touch, "touch"}, {&t.ln, "ln"}, {&t.hostname, "hostname"}, {&t.chroot, "chroot"}, {&t.setpriv, "setpriv"}} {
		p, err := exec.LookPath(x.name)
		if err != nil {
			return t, fmt.Errorf("devcluster needs %s: run tools/deps.sh: %w", x.name, err)
		}
		*x.dst = p
	}
	return t, nil
}

// devices are the device nodes of a container's /dev (a tmpfs), bound from
// the host's.
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// rootScript is the shell code that builds a container's root in its own
// mount namespace: a tmpfs at scratch holding an overlay of the image's
// root (so the container may write to it, and the image's unpacked files
// are shared by every container and never changed), with /proc, a /dev of
// the usual devices, and the pod's /etc/hosts, /etc/resolv.conf and
// /etc/hostname (which `ip netns exec` has bound over the host's). It
// leaves the root's path in $R; the tmpfs and everything mounted on it go
// with the namespace.
func (t hostTools) rootScript(scratch, lower string) string {
	q := shellQuote
	var b strings.Builder
	fmt.Fprintf(&b, "S=%s && R=$S/root && %s -t tmpfs -o mode=755 tmpfs \"$S\" && %s \"$S/upper\" \"$S/work\" \"$R\" && ",
		q(scratch), t.mount, t.mkdir)
	fmt.Fprintf(&b, "%s -t overlay overlay -o lowerdir=%s,upperdir=\"$S/upper\",workdir=\"$S/work\" \"$R\" && ", t.mount, q(lower))
	fmt.Fprintf(&b, "%s -p \"$R/proc\" \"$R/dev\" \"$R/etc\" && %s -t proc proc \"$R/proc\" && ", t.mkdir, t.mount)
	fmt.Fprintf(&b, "%s -t tmpfs -o nosuid,mode=755 tmpfs \"$R/dev\" && %s \"$R/dev/shm\" \"$R/dev/pts\" && %s -s /proc/self/fd \"$R/dev/fd\" && ", t.mount, t.mkdir, t.ln)
	for _, d := range devices {
		fmt.Fprintf(&b, "%s \"$R/dev/%s\" && %s --bind /dev/%s \"$R/dev/%s\" && ", t.touch, d, t.mount, d, d)
	}
	for _, f := range []string{"hosts", "resolv.conf", "hostname"} {
		fmt.Fprintf(&b, "{ [ ! -e /etc/%s ] || { %s \"$R/etc/%s\" && %s --bind /etc/%s \"$R/etc/%s\"; }; } && ", f, t.touch, f, t.mount, f, f)
	}
	return b.String()
}

// chrootArgv is the end of the launcher for a container of an image: enter
// the root ($R) as u and exec argv there (chroot(8) switches the user
// after entering; setpriv only sets no_new_privs, before).
func (t hostTools) chrootArgv(u user) []string {
	var argv []string
	if u.noNewPrivs {
		argv = append(argv, t.setpriv, "--no-new-privs", "--")
	}
	argv = append(argv, t.chroot)
	if !(u.uid == 0 && u.gid == 0 && len(u.groups) == 0) {
		argv = append(argv, fmt.Sprintf("--userspec=%d:%d", u.uid, u.gid))
		if len(u.groups) > 0 {
			gs := make([]string, len(u.groups))
			for i, g := range u.groups {
				gs[i] = strconv.FormatInt(g, 10)
			}
			argv = append(argv, "--groups="+strings.Join(gs, ","))
		}
	}
	return argv
}

// checkReference fails early, with the field, for a reference no registry
// would take.
func checkReference(ref string) error {
	if isHostImage(ref) {
		return nil
	}
	if _, err := name.ParseReference(ref); err != nil {
		return fmt.Errorf("image %q: %w", ref, err)
	}
	return nil
}
