//go:build linux

package tunnel

import (
	"encoding/binary"
	"errors"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpGSOSupported reports whether the kernel segments UDP for uc
// (UDP_SEGMENT, Linux 4.18+): getsockopt of the option fails where it is
// unknown.
func udpGSOSupported(uc *net.UDPConn) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return false
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, serr = unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
	}); err != nil {
		return false
	}
	return serr == nil
}

// udpSegmentSpace is the control-message room one UDP_SEGMENT option takes.
var udpSegmentSpace = unix.CmsgSpace(2)

// appendUDPSegment appends the control message that makes one sendmsg
// buffer leave as datagrams of size bytes each (the last may be shorter).
func appendUDPSegment(oob []byte, size int) []byte {
	off := len(oob)
	oob = append(oob, make([]byte, udpSegmentSpace)...)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[off])) // cmsg offsets are CmsgSpace-aligned
	h.Level, h.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(oob[off+unix.CmsgLen(0):], uint16(size))
	return oob
}

// gsoUnsupported reports whether a segmented send failed because the
// device cannot take one (EIO: no checksum offload, as quic-go also
// checks), which switches segmentation off for the socket.
func gsoUnsupported(err error) bool { return errors.Is(err, unix.EIO) }
