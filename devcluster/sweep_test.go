package devcluster

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSweepRemovesWhatADeadRunLeft plants the leftovers of a run killed
// with SIGKILL (namespaces with a process inside, a control-plane-like
// process naming the run directory, /etc/netns files, blackhole routes)
// and checks that one sweep removes all of them. Needs root, as the dev
// cluster does.
func TestSweepRemovesWhatADeadRunLeft(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces); CI runs as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const id = "dead01"
	const k = maxSlots - 1
	slot, err := lockFile(slotLock(BaseDir, k))
	if err != nil {
		if os.MkdirAll(BaseDir, 0o755) != nil {
			t.Fatal(err)
		}
		if slot, err = lockFile(slotLock(BaseDir, k)); err != nil {
			t.Skipf("slot %d is in use by a live run", k)
		}
	}
	pods, services := slotCIDRs(k)
	dir := filepath.Join(BaseDir, "run-"+id)
	prefix := netnsPrefix + id + "-"
	t.Cleanup(func() { // in case the sweep fails
		removeNetns(context.Background(), prefix)
		ipCmd(context.Background(), "route", "del", "blackhole", pods.String())
		ipCmd(context.Background(), "route", "del", "blackhole", services.String())
		os.RemoveAll(dir)
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(dir, 0o755))
	must(os.WriteFile(filepath.Join(dir, "slot"), []byte("63"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644))
	must(ipCmd(ctx, "route", "add", "blackhole", pods.String()))
	must(ipCmd(ctx, "route", "add", "blackhole", services.String()))
	slot.Close() // the dead run no longer holds its slot
	must(ipCmd(ctx, "netns", "add", prefix+"net"))
	must(ipCmd(ctx, "netns", "add", prefix+"p1"))
	must(os.MkdirAll("/etc/netns/"+prefix+"p1", 0o755))
	must(os.WriteFile("/etc/netns/"+prefix+"p1/resolv.conf", []byte("nameserver 10.64.0.1\n"), 0o644))
	start := func(argv ...string) (chan struct{}, int) {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives its parent, like an orphan
		must(cmd.Start())
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		return done, cmd.Process.Pid
	}
	inPod, pid := start("ip", "netns", "exec", prefix+"p1", "sleep", "300")
	controlPlane, _ := start("tail", "-f", filepath.Join(dir, "marker"))
	// Sweep only once the process has entered the namespace, as a pod's has.
	var want syscall.Stat_t
	must(syscall.Stat(filepath.Join(netnsDir, prefix+"p1"), &want))
	must(Poll(ctx, 30*time.Second, func(context.Context) (bool, error) {
		var st syscall.Stat_t
		err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st)
		return err == nil && st.Ino == want.Ino, nil
	}))

	must(sweep(ctx, BaseDir, slog.New(slog.DiscardHandler)))

	for name, done := range map[string]chan struct{}{"pod process": inPod, "control-plane process": controlPlane} {
		select {
		case <-done:
		case <-ctx.Done():
			t.Errorf("%s still running after the sweep", name)
		}
	}
	entries, _ := os.ReadDir(netnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Errorf("netns %s left", e.Name())
		}
	}
	if _, err := os.Stat("/etc/netns/" + prefix + "p1"); err == nil {
		t.Error("/etc/netns entry left")
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("run directory left")
	}
	out, _ := exec.Command("ip", "route", "show", "type", "blackhole").CombinedOutput()
	for _, cidr := range []string{pods.String(), services.String()} {
		if strings.Contains(string(out), cidr) {
			t.Errorf("blackhole route for %s left", cidr)
		}
	}
}
