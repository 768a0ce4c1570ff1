package devcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Every run lives under baseDir/run-<id>/, holds an exclusive flock on its
// lock file for its whole life, and names its namespaces "blst-<id>-...".
// A run whose lock can be taken is dead; sweep removes what it left.
const netnsPrefix = "blst-"

// lockFile takes a non-blocking exclusive flock; the kernel releases it
// when the process dies, however it dies.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// sweep removes the leftovers of every dead run under base: processes
// (found by the run directory in their arguments, or by living in one of
// its namespaces), namespaces, /etc/netns entries and blackhole routes.
func sweep(ctx context.Context, base string, log *slog.Logger) error {
	live := map[string]bool{}
	var errs []error
	entries, _ := os.ReadDir(base)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".new-") { // a run killed while it started
			if lock, err := lockFile(filepath.Join(base, e.Name(), "lock")); err == nil {
				lock.Close()
				os.RemoveAll(filepath.Join(base, e.Name()))
			}
			continue
		}
		id, ok := strings.CutPrefix(e.Name(), "run-")
		if !ok || !e.IsDir() {
			continue
		}
		dir := filepath.Join(base, e.Name())
		lock, err := lockFile(filepath.Join(dir, "lock"))
		if err != nil {
			live[id] = true
			continue
		}
		log.Info("removing leftovers of a dead dev cluster", "run", id)
		killByArg(dir)
		errs = append(errs, removeNetns(ctx, netnsPrefix+id+"-"))
		// Its blackhole routes, unless a live run has taken the slot
		// since (and with it the same CIDRs).
		if data, err := os.ReadFile(filepath.Join(dir, "slot")); err == nil {
			if k, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && k >= 0 && k < maxSlots {
				if slot, err := lockFile(slotLock(base, k)); err == nil {
					pods, services := slotCIDRs(k)
					_ = ipCmd(ctx, "route", "del", "blackhole", pods.String())
					_ = ipCmd(ctx, "route", "del", "blackhole", services.String())
					slot.Close()
				}
			}
		}
		lock.Close()
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, err)
		}
	}
	// Namespaces whose run directory is gone entirely.
	nss, _ := os.ReadDir(netnsDir)
	for _, ns := range nss {
		rest, ok := strings.CutPrefix(ns.Name(), netnsPrefix)
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, "-")
		if !live[id] {
			errs = append(errs, removeNetns(ctx, netnsPrefix+id+"-"))
		}
	}
	return errors.Join(errs...)
}

// removeNetns kills every process in, and deletes, each namespace whose
// name starts with prefix.
func removeNetns(ctx context.Context, prefix string) error {
	var errs []error
	nss, _ := os.ReadDir(netnsDir)
	for _, ns := range nss {
		if !strings.HasPrefix(ns.Name(), prefix) {
			continue
		}
		killInNetns(ns.Name())
		if err := ipCmd(ctx, "netns", "del", ns.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	etc, _ := os.ReadDir("/etc/netns")
	for _, e := range etc {
		if strings.HasPrefix(e.Name(), prefix) {
			if err := os.RemoveAll(filepath.Join("/etc/netns", e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// killByArg SIGKILLs every process with an argument containing dir.
func killByArg(dir string) {
	forEachProc(func(pid int) {
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(cmdline, []byte(dir+"/")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

// killInNetns SIGKILLs every process in the named namespace.
func killInNetns(name string) {
	var want syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netnsDir, name), &want); err != nil {
		return
	}
	forEachProc(func(pid int) {
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
}

func forEachProc(fn func(pid int)) {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		fn(pid)
	}
}

// Sweep removes the leftovers of dead runs (what `ballast dev cluster
// down` does after stopping `up`, and every Start does first).
func Sweep(ctx context.Context, log *slog.Logger) error {
	return sweep(ctx, BaseDir, log)
}
