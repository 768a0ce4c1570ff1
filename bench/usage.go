package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTick is one unit of utime and stime in /proc/<pid>/stat. Linux
// reports them in USER_HZ, which is 100 on every architecture Go supports
// (sysconf(_SC_CLK_TCK)); the resolution is therefore 10 ms of CPU, which
// is why a measurement must run long enough to use hundreds of ticks.
const clockTick = 10 * time.Millisecond

// usage is what the kernel says a process (and its children) used: CPU
// time in user and kernel mode, and resident memory.
type usage struct {
	CPU time.Duration
	// RSS is VmRSS, in bytes.
	RSS int64
}

// procCPU parses one /proc/<pid>/stat line and returns utime+stime and
// the parent's pid. The command name (field 2) is in parentheses and may
// itself hold spaces and parentheses, so fields are counted from the last
// ')'.
func procCPU(stat []byte) (cpu time.Duration, ppid int, err error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("stat line %.40q: no ')' after the command name", stat)
	}
	// After ')': state(3) ppid(4) ... utime(14) stime(15).
	fields := strings.Fields(string(stat[end+1:]))
	const stateField, ppidField, utimeField, stimeField = 3, 4, 14, 15
	at := func(n int) (int64, error) {
		i := n - stateField
		if i >= len(fields) {
			return 0, fmt.Errorf("stat line has %d fields, want field %d", len(fields)+stateField-1, n)
		}
		v, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("stat field %d: %w", n, err)
		}
		return v, nil
	}
	p, err := at(ppidField)
	if err != nil {
		return 0, 0, err
	}
	u, err := at(utimeField)
	if err != nil {
		return 0, 0, err
	}
	s, err := at(stimeField)
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(u+s) * clockTick, int(p), nil
}

// treeUsage sums the usage of pid and every process descended from it, so
// nginx's master and worker count as one proxy.
func treeUsage(pid int) (usage, error) {
	tree, err := processTree(pid)
	if err != nil {
		return usage{}, err
	}
	return usageOf(tree)
}

// treeMemory sums the memory of pid and its descendants.
func treeMemory(pid int) (memory, error) {
	tree, err := processTree(pid)
	if err != nil {
		return memory{}, err
	}
	var sum memory
	for _, p := range tree {
		m, err := processMemory(p)
		if err != nil {
			return memory{}, err
		}
		sum.RSS, sum.Anon = sum.RSS+m.RSS, sum.Anon+m.Anon
	}
	return sum, nil
}

// processTree lists pid and its descendants, pid first.
func processTree(pid int) ([]int, error) {
	parents, err := processParents()
	if err != nil {
		return nil, err
	}
	tree := []int{pid}
	in := map[int]bool{pid: true}
	for grew := true; grew; {
		grew = false
		for p, pp := range parents {
			if !in[p] && in[pp] {
				in[p] = true
				tree = append(tree, p)
				grew = true
			}
		}
	}
	return tree, nil
}

// usageOf sums the usage of pids. The first must exist; a child that ended
// since it was listed is skipped.
func usageOf(pids []int) (usage, error) {
	var total usage
	for i, p := range pids {
		u, err := processUsage(p)
		if err != nil {
			if i > 0 && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return usage{}, err
		}
		total.CPU += u.CPU
		total.RSS += u.RSS
	}
	return total, nil
}

func processUsage(pid int) (usage, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	cpu, _, err := procCPU(stat)
	if err != nil {
		return usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	m, err := processMemory(pid)
	if err != nil {
		return usage{}, err
	}
	return usage{CPU: cpu, RSS: m.RSS}, nil
}

// processParents maps every running process to its parent.
func processParents() (map[int]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	parents := make(map[int]int, len(entries))
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone already
		}
		if _, ppid, err := procCPU(stat); err == nil {
			parents[pid] = ppid
		}
	}
	return parents, nil
}

// memory is what the kernel says a process holds in RAM: VmRSS, and the
// anonymous part of it, RssAnon (heap and stacks: what grows with the
// state a control plane keeps). The rest of VmRSS is mostly the pages of
// its own binary it has touched, which depends on how much code the
// binary links, not on the load.
type memory struct {
	RSS, Anon int64 // bytes
}

// statusKB reads a "<field>: <n> kB" line of /proc/<pid>/status; a field
// that is missing (a zombie or a kernel thread has no VmRSS) reads as 0.
func statusKB(status []byte, field string) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte(field+":"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s line %q: want \"<n> kB\"", field, bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s line %q: %w", field, bytes.TrimSpace(line), err)
		}
		return kb * 1024, nil
	}
	return 0, nil
}

func processMemory(pid int) (memory, error) {
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return memory{}, fmt.Errorf("process %d: %w", pid, err)
	}
	rss, err := statusKB(status, "VmRSS")
	if err != nil {
		return memory{}, fmt.Errorf("process %d: %w", pid, err)
	}
	anon, err := statusKB(status, "RssAnon")
	if err != nil {
		return memory{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return memory{RSS: rss, Anon: anon}, nil
}

// sampleMemory samples pid's memory every 100 ms until the returned
// function is called, which returns the highest of each seen.
func sampleMemory(ctx context.Context, pid int) func() memory {
	return samplePeak(ctx, func(peak *memory) {
		if m, err := processMemory(pid); err == nil {
			peak.RSS, peak.Anon = max(peak.RSS, m.RSS), max(peak.Anon, m.Anon)
		}
	})
}

// sampleRSS samples the RSS of pids every 100 ms until the returned
// function is called, which returns the highest seen.
func sampleRSS(ctx context.Context, pids []int) func() int64 {
	if len(pids) == 0 {
		return func() int64 { return 0 }
	}
	return samplePeak(ctx, func(peak *int64) {
		if u, err := usageOf(pids); err == nil {
			*peak = max(*peak, u.RSS)
		}
	})
}

// samplePeak calls sample every 100 ms, from now until the returned
// function is called, which returns what sample kept in peak.
func samplePeak[T any](ctx context.Context, sample func(peak *T)) func() T {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg   sync.WaitGroup
		peak T
	)
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			sample(&peak)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return func() T {
		cancel()
		wg.Wait()
		return peak
	}
}

// runQueueWait sums how long every thread of pids has waited on a run
// queue, runnable but not running, from /proc/<pid>/task/*/schedstat: the
// time a process lost to others for a CPU. A process or thread that ended
// since pids were listed is skipped (its wait with it).
func runQueueWait(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, p := range pids {
		stats, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(p), "task", "*", "schedstat"))
		if err != nil {
			return 0, err
		}
		for _, f := range stats {
			b, err := os.ReadFile(f)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, err
			}
			w, err := schedWait(b)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", f, err)
			}
			total += w
		}
	}
	return total, nil
}

// schedWait is the run-queue wait of one schedstat line: "<ns on a CPU>
// <ns waiting on a run queue> <timeslices>".
func schedWait(line []byte) (time.Duration, error) {
	f := strings.Fields(string(line))
	if len(f) < 2 {
		return 0, fmt.Errorf("schedstat %.40q: want at least 2 fields", line)
	}
	ns, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("schedstat wait: %w", err)
	}
	return time.Duration(ns), nil
}
