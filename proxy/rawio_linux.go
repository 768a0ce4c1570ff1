package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// socketIO returns the reader and writer an h2conn uses for nc (reading
// through r, which is nc or wraps it). For a socket they make raw read and
// write system calls on its non-blocking descriptor, waiting for readiness
// on Go's netpoller exactly as net.Conn does, but without telling the
// scheduler a system call is under way (entersyscall). On a proxy with one
// P that telling costs more than the call: each read or write after an
// idle moment wakes sysmon from its deep sleep (a futex wake), and sysmon
// then polls every 20 µs for the next millisecond (dozens of nanosleeps,
// each a context switch), retaking the P from any write that runs that long
// and handing it to another thread that has nothing to run. A loopback
// write runs the receiver's TCP input too, so it often does. Non-blocking
// socket calls return at once (EAGAIN) instead of blocking, so there is
// nothing for the scheduler to do while one runs.
func socketIO(nc net.Conn, r io.Reader) (io.Reader, io.Writer) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		if pc, isPrefix := nc.(*prefixConn); isPrefix && r == nc {
			rd, w := socketIO(pc.Conn, pc.Conn)
			if _, raw := w.(*rawSocket); raw {
				return io.MultiReader(&prefixReader{pc}, rd), w
			}
		}
		return r, nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return r, nc
	}
	s := newRawSocket(rc)
	if r != io.Reader(nc) {
		return r, s
	}
	return s, s
}

// socketConn returns nc with the reads and writes socketIO would make,
// for a layer over the socket (TLS) that the h2conn reads and writes in
// its place; nc itself if it is not a socket.
func socketConn(nc net.Conn) net.Conn {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	return &rawConn{Conn: nc, s: newRawSocket(rc)}
}

// rawConn is a socket read and written by a rawSocket. Its user (a
// tls.Conn) reads from one goroutine at a time and writes from one at a
// time, as rawSocket needs.
type rawConn struct {
	net.Conn
	s *rawSocket
}

func (c *rawConn) Read(b []byte) (int, error)  { return c.s.Read(b) }
func (c *rawConn) Write(b []byte) (int, error) { return c.s.Write(b) }

// prefixReader reads what a prefixConn replays, then ends.
type prefixReader struct{ c *prefixConn }

func (p *prefixReader) Read(b []byte) (int, error) {
	if len(p.c.prefix) == 0 {
		return 0, io.EOF
	}
	n := copy(b, p.c.prefix)
	p.c.prefix = p.c.prefix[n:]
	return n, nil
}

// rawSocket reads and writes a socket with raw system calls. Reads come
// from one goroutine at a time (the read loop), writes too (under the
// conn's lock); each side keeps its call's state here and its callback is
// made once, so a call allocates nothing (grpc-go's
// internal/transport/readyreader reads through RawConn the same way, with
// syscall.Read). Unlike syscall.Read and Write, raw calls do not tell the
// race detector about the buffer they fill or drain; the buffers are the
// conn's bufio buffers, used only under the read loop or the conn's lock.
type rawSocket struct {
	rc syscall.RawConn

	rbuf    []byte
	rn      int
	rerrno  syscall.Errno
	readFn  func(fd uintptr) bool
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(fd uintptr) bool
}

func newRawSocket(rc syscall.RawConn) *rawSocket {
	s := &rawSocket{rc: rc}
	s.readFn = s.read
	s.writeFn = s.write
	return s
}

func (s *rawSocket) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.rbuf, s.rn, s.rerrno = b, 0, 0
	err := s.rc.Read(s.readFn)
	n, errno := s.rn, s.rerrno
	s.rbuf = nil
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// read makes one read(2) call; false means nothing to read yet.
func (s *rawSocket) read(fd uintptr) bool {
	b := s.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			s.rn = int(r)
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.rerrno = e
			return true
		}
	}
}

func (s *rawSocket) Write(b []byte) (int, error) {
	s.wbuf, s.wn, s.werrno = b, 0, 0
	err := s.rc.Write(s.writeFn)
	n, errno := s.wn, s.werrno
	s.wbuf = nil
	switch {
	case err != nil:
		return n, err
	case errno != 0:
		return n, os.NewSyscallError("write", errno)
	}
	return n, nil
}

// write makes write(2) calls until all of wbuf is written; false means the
// socket's buffer is full.
func (s *rawSocket) write(fd uintptr) bool {
	b := s.wbuf
	for s.wn < len(b) {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[s.wn])), uintptr(len(b)-s.wn))
		switch e {
		case 0:
			s.wn += int(r)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			s.werrno = e
			return true
		}
	}
	return true
}
