//go:build !linux

package tunnel

import "net"

// UDP segmentation offload is Linux's (UDP_SEGMENT); elsewhere every
// record is its own datagram.

func udpGSOSupported(*net.UDPConn) bool { return false }

var udpSegmentSpace = 0

func appendUDPSegment(oob []byte, _ int) []byte { return oob }

func gsoUnsupported(error) bool { return false }
