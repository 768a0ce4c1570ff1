package proxy

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST (IPv4) and IP6T_SO_ORIGINAL_DST (IPv6):
// netfilter's record of where a REDIRECTed connection was going.
const soOriginalDst = 80

// originalDst reads the destination a connection had before iptables
// redirected it to the proxy. It fails for connections that were not
// redirected.
func originalDst(c net.Conn) (netip.AddrPort, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("original destination: %T is not a TCP connection", c)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	local, _ := tc.LocalAddr().(*net.TCPAddr)
	v6 := local != nil && local.IP.To4() == nil
	var dst netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if v6 {
			info, err := unix.GetsockoptIPv6MTUInfo(int(fd), unix.SOL_IPV6, soOriginalDst)
			if err != nil {
				serr = err
				return
			}
			port := (*[2]byte)(unsafe.Pointer(&info.Addr.Port))
			dst = netip.AddrPortFrom(netip.AddrFrom16(info.Addr.Addr), binary.BigEndian.Uint16(port[:]))
			return
		}
		// The kernel writes a sockaddr_in; IPv6Mreq is merely a 20-byte
		// buffer large enough to receive it.
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, soOriginalDst)
		if err != nil {
			serr = err
			return
		}
		sa := mreq.Multiaddr
		dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(sa[4:8])), binary.BigEndian.Uint16(sa[2:4]))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.RemoteAddr(), err)
	}
	return dst, nil
}
