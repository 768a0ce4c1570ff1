package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ballast-dev/ballast/internal/freeport"
)

// onFreePorts starts a child process on n free ports of ip (start) and
// waits until it serves (ready). A port found free can be taken by
// someone else before the child binds it, so a child that exits before it
// is ready is tried again on other ports, three tries in all; one that
// runs but never serves is not (another port will not help). A child that
// never became ready is stopped.
func onFreePorts(ip netip.Addr, n int, start func(ports []netip.AddrPort) (*process, error), ready func(*process, []netip.AddrPort) error) (*process, []netip.AddrPort, error) {
	var lastErr error
	for range 3 {
		ports, err := freeport.N(ip, n)
		if err != nil {
			return nil, nil, err
		}
		proc, err := start(ports)
		if err != nil {
			return nil, nil, err
		}
		if lastErr = ready(proc, ports); lastErr == nil {
			return proc, ports, nil
		}
		proc.stop()
		if !errors.Is(lastErr, errExited) {
			break
		}
	}
	return nil, nil, lastErr
}

// process is a child the benchmark started and must stop: it runs in its
// own process group, so stop reaches its children too (nginx's worker),
// and it is killed if the benchmark dies.
type process struct {
	name   string
	cmd    *exec.Cmd
	out    *syncBuffer
	exited chan struct{}
	err    error
}

func startProcess(cmd *exec.Cmd, name string) (*process, error) {
	out := &syncBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) output() string { return p.out.String() }

// tail is the end of the process's output, for an error message.
func (p *process) tail() string {
	out := strings.TrimSpace(p.output())
	if r := []rune(out); len(r) > 600 {
		return "…" + string(r[len(r)-600:])
	}
	if out == "" {
		return "(none)"
	}
	return out
}

// errExited says a child process ended before it was ready, which is
// worth a retry on another port; a child that runs but never serves is not.
var errExited = errors.New("exited")

// waitReady calls check every interval until it succeeds, the process
// exits (an error wrapping errExited) or wait is over; what says what
// success means, for the error.
func (p *process) waitReady(ctx context.Context, wait, interval time.Duration, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s %w before %s: %v; output: %s", p.name, errExited, what, p.err, p.tail())
		case <-ctx.Done():
			return fmt.Errorf("%s not %s after %s: %w; its last output: %s", p.name, what, wait, err, p.tail())
		case <-tick.C:
		}
	}
}

// stop asks the process group to terminate, and kills it if it has not
// within five seconds.
func (p *process) stop() {
	pgid := p.cmd.Process.Pid
	select {
	case <-p.exited:
		syscall.Kill(-pgid, syscall.SIGKILL) // any child it left behind
		return
	default:
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
	<-p.exited
}

// syncBuffer keeps a child's output for error messages, bounded to its
// last 64 KiB.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - 64<<10; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
