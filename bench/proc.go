package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is one unit of utime and stime in /proc/<pid>/stat. Linux
// reports them in USER_HZ, which is 100 on every architecture Go supports
// (sysconf(_SC_CLK_TCK)); the resolution is therefore 10 ms of CPU, which
// is why a measurement must run long enough to use hundreds of ticks.
const clockTick = 10 * time.Millisecond

// Usage is what the kernel says a process (and its children) used: CPU
// time in user and kernel mode, and resident memory.
type Usage struct {
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

// procRSS finds VmRSS in a /proc/<pid>/status file. A zombie or kernel
// thread has no VmRSS line; that reads as 0.
func procRSS(status []byte) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: want \"<n> kB\"", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS line %q: %w", bytes.TrimSpace(line), err)
		}
		return kb * 1024, nil
	}
	return 0, nil
}

// TreeUsage sums the usage of pid and every process descended from it, so
// nginx's master and worker count as one proxy.
func TreeUsage(pid int) (Usage, error) {
	tree, err := processTree(pid)
	if err != nil {
		return Usage{}, err
	}
	return usageOf(tree)
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
func usageOf(pids []int) (Usage, error) {
	var total Usage
	for i, p := range pids {
		u, err := processUsage(p)
		if err != nil {
			if i > 0 && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return Usage{}, err
		}
		total.CPU += u.CPU
		total.RSS += u.RSS
	}
	return total, nil
}

func processUsage(pid int) (Usage, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return Usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	cpu, _, err := procCPU(stat)
	if err != nil {
		return Usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	status, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return Usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	rss, err := procRSS(status)
	if err != nil {
		return Usage{}, fmt.Errorf("process %d: %w", pid, err)
	}
	return Usage{CPU: cpu, RSS: rss}, nil
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
