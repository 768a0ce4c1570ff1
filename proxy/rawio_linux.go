package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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
			if s, raw := w.(*rawSocket); raw {
				s.prefix, pc.prefix = pc.prefix, nil
				return rd, w
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
	// prefix is what a sniffed connection already read, read first.
	prefix []byte
	// closing says shutdown was called: pump stops.
	closing atomic.Bool
	// In pump, reads make their system call on fd directly (direct),
	// with recvmsg, which says how many bytes the socket still holds
	// (TCP_INQ); drained says the last read left it empty, with no
	// end of stream left to read either.
	fd      uintptr
	direct  bool
	drained bool
	msg     unix.Msghdr
	iov     unix.Iovec
	control [32]byte

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
	if len(s.prefix) > 0 {
		n := copy(b, s.prefix)
		s.prefix = s.prefix[n:]
		s.drained = false
		return n, nil
	}
	s.rbuf, s.rn, s.rerrno = b, 0, 0
	var err error
	if s.direct {
		if !s.recv(s.fd) {
			err = errWouldBlock
		}
	} else {
		err = s.rc.Read(s.readFn)
	}
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

// errWouldBlock is a read in pump that found nothing to read yet.
var errWouldBlock = errors.New("proxy: nothing to read yet")

// pump is a connection's read loop on a raw socket. It reads into br and
// calls handle after each read that got bytes; handle takes every whole
// frame br holds and must not read further. It runs inside one
// RawConn.Read, waiting on the poller as that does, for one reason: after
// a read that left the socket empty (the kernel says so, TCP_INQ, and
// counts an end of stream still to read as a byte), the next read can wait
// for the poller's word that more arrived, instead of making a system call
// that finds nothing (EAGAIN) before waiting anyway. That word may come
// while handle runs, before the wait; the poller keeps it for the wait, but
// only within one RawConn.Read (a new one forgets it), hence the one call.
// Under load, half of a sidecar's reads found nothing before.
//
// While pump runs, net.Conn.Close of the socket blocks until it returns
// (Close waits for the I/O under way to end): the connection must be
// closed with shutdown, which pump notices, and closed for good once pump
// has returned.
func (s *rawSocket) pump(br *bufio.Reader, handle func() error) error {
	var err error
	handled, drained := false, false
	// Without TCP_INQ no read reports drained, and the loop reads until
	// it finds nothing, as a plain read loop does.
	s.rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_TCP, unix.TCP_INQ, 1) })
	rerr := s.rc.Read(func(fd uintptr) bool {
		for {
			if s.closing.Load() {
				err = net.ErrClosed
				return true
			}
			if !handled {
				if err = handle(); err != nil {
					return true
				}
				handled = true
				if drained {
					return false
				}
				continue
			}
			s.fd, s.direct = fd, true
			_, err = br.Peek(br.Buffered() + 1)
			s.direct = false
			if err == errWouldBlock {
				err = nil
				return false
			}
			if err != nil {
				return true
			}
			handled, drained = false, s.drained
		}
	})
	if err != nil {
		return err
	}
	return rerr
}

// shutdown shuts the socket down both ways without waiting for a pump in
// progress, which it wakes; pump then returns net.ErrClosed.
func (s *rawSocket) shutdown() error {
	s.closing.Store(true)
	var err error
	if cerr := s.rc.Control(func(fd uintptr) { err = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }); cerr != nil {
		return cerr
	}
	return err
}

// recv makes one recvmsg(2) call into rbuf (false: nothing to read yet)
// and sets drained from the TCP_INQ the kernel reports with it: the bytes
// left in the socket, or 1 if only the end of the stream is (a short read
// alone does not say the peer has not closed). No report, no drained.
func (s *rawSocket) recv(fd uintptr) bool {
	b := s.rbuf
	s.iov.Base = &b[0]
	s.iov.SetLen(len(b))
	s.msg.Iov = &s.iov
	s.msg.SetIovlen(1)
	s.msg.Control = &s.control[0]
	s.msg.SetControllen(len(s.control))
	s.drained = false
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&s.msg)), 0)
		switch e {
		case 0:
			s.rn = int(r)
			s.drained = r > 0 && s.inq() == 0
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

// inq is the TCP_INQ control message of the last recvmsg, -1 if none.
func (s *rawSocket) inq() int {
	n := int(s.msg.Controllen)
	if n < unix.CmsgSpace(4) || n > len(s.control) {
		return -1
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&s.control[0]))
	if h.Level != syscall.SOL_TCP || h.Type != unix.TCP_CM_INQ || int(h.Len) < unix.CmsgLen(4) {
		return -1
	}
	return int(*(*int32)(unsafe.Pointer(&s.control[unix.CmsgLen(0)])))
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
