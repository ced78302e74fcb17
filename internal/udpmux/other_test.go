//go:build !linux

package udpmux

import (
	"net"
	"testing"
)

// rcvBuf is only consulted for the kernel path, which is Linux-only.
func rcvBuf(testing.TB, net.PacketConn) int { return 0 }
