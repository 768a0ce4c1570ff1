package devcluster

import (
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// user is who a container's process runs as. The zero value is root, as
// for an image without a USER.
type user struct {
	uid, gid   int64
	groups     []int64 // supplementary; none when empty
	noNewPrivs bool
}

// containerUser reads the container's securityContext, then the pod's:
// runAsUser, runAsGroup (unset: gid 0, as container runtimes give a numeric
// uid the image does not name), supplementalGroups,
// allowPrivilegeEscalation=false (no_new_privs) and runAsNonRoot, which
// refuses to start a container that would run as root, as the kubelet does.
// It matters to the sidecar: its iptables rules exclude the proxy's uid.
//
// An image's USER (img; nil for HostImage) is the default: its uid and gid
// hold unless runAsUser is set, as container runtimes do.
func containerUser(pod *corev1.Pod, c corev1.Container, img *pulledImage) (user, error) {
	var u user
	var nonRoot bool
	if img != nil {
		uid, gid, set, err := img.user()
		if err != nil {
			return user{}, fmt.Errorf("container %s: %w", c.Name, err)
		}
		runAsUser := pod.Spec.SecurityContext != nil && pod.Spec.SecurityContext.RunAsUser != nil ||
			c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil
		if set && !runAsUser {
			u.uid, u.gid = uid, gid
		}
	}
	if psc := pod.Spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil {
			u.uid = *psc.RunAsUser
		}
		if psc.RunAsGroup != nil {
			u.gid = *psc.RunAsGroup
		}
		if psc.RunAsNonRoot != nil {
			nonRoot = *psc.RunAsNonRoot
		}
		u.groups = append(u.groups, psc.SupplementalGroups...)
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			u.uid = *sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			u.gid = *sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
		u.noNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	}
	if u.uid < 0 || u.gid < 0 {
		return user{}, fmt.Errorf("container %s: runAsUser %d, runAsGroup %d: want ids ≥ 0", c.Name, u.uid, u.gid)
	}
	if nonRoot && u.uid == 0 {
		return user{}, fmt.Errorf("container %s: runAsNonRoot is set but it would run as root (give runAsUser)", c.Name)
	}
	return u, nil
}

// root reports whether the process keeps the harness's root identity.
func (u user) root() bool { return u.uid == 0 && u.gid == 0 && len(u.groups) == 0 && !u.noNewPrivs }

// available reports whether this machine can run as u: leaving root
// needs setpriv(1), from util-linux (tools/deps.sh installs it).
func (u user) available() error {
	if u.root() {
		return nil
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		return fmt.Errorf("runAsUser %d needs setpriv (util-linux; run tools/deps.sh): %w", u.uid, err)
	}
	return nil
}

// wrap prefixes argv with setpriv(1), which switches to the user right
// before exec. It cannot be the harness's own SysProcAttr.Credential: the
// launcher (`ip netns exec`, hostname) needs root to enter the pod's
// namespaces and mount its resolv.conf, so the switch must come last.
// Leaving root drops every capability, as in a container without added
// ones.
func (u user) wrap(argv []string) []string {
	if u.root() {
		return argv
	}
	w := []string{"setpriv",
		"--reuid=" + strconv.FormatInt(u.uid, 10),
		"--regid=" + strconv.FormatInt(u.gid, 10),
	}
	if len(u.groups) == 0 {
		w = append(w, "--clear-groups")
	} else {
		gs := make([]string, len(u.groups))
		for i, g := range u.groups {
			gs[i] = strconv.FormatInt(g, 10)
		}
		w = append(w, "--groups="+strings.Join(gs, ","))
	}
	if u.noNewPrivs {
		w = append(w, "--no-new-privs")
	}
	return append(append(w, "--"), argv...)
}
