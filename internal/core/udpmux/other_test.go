//go:build !linux

package udpmux

import (
	"net"
	"testing"
)

// rcvBuf is only consulted for the kernel path, which is Linux-only.
func rcvBuf(testing.TB, net.PacketConn) int { return 0 }

// loopbackOnlyNetns: network namespaces are Linux's; elsewhere the
// wildcard cases (which listen beyond loopback) do not run.
func loopbackOnlyNetns(t *testing.T) func(func() error) error {
	t.Skip("wildcard binds run only in a Linux network namespace")
	return nil
}
