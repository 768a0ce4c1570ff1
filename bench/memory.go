package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memory is what the kernel says a process holds in RAM: VmRSS, and the
// anonymous part of it, RssAnon (heap and stacks: what grows with the
// state a control plane keeps). The rest of VmRSS is mostly the pages of
// its own binary it has touched, which depends on how much code the
// binary links, not on the load.
type memory struct {
	RSS, Anon int64 // bytes
}

// statusKB reads a "<field>: <n> kB" line of /proc/<pid>/status; a field
// that is missing (a zombie) reads as 0.
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
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg   sync.WaitGroup
		peak memory
	)
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			if m, err := processMemory(pid); err == nil {
				peak.RSS, peak.Anon = max(peak.RSS, m.RSS), max(peak.Anon, m.Anon)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return func() memory {
		cancel()
		wg.Wait()
		return peak
	}
}
