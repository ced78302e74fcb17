//go:build !linux

package udpmux

import (
	"net"
	"os"
	"strings"
	"testing"
)

// rcvBuf is only consulted for the kernel path, which is Linux-only.
func rcvBuf(testing.TB, net.PacketConn) int { return 0 }

// loopbackOnlyNetns: network namespaces are Linux's; elsewhere the
// wildcard cases (which listen beyond loopback) do not run, and under
// CI=true (whose machines are Linux) that is a failure, never a skip.
func loopbackOnlyNetns(t *testing.T) func(func() error) error {
	// testenv.InCI's rule; testenv itself builds only on Linux.
	if ci := strings.ToLower(os.Getenv("CI")); ci == "true" || ci == "1" || ci == "yes" {
		t.Fatal("wildcard binds need a Linux network namespace (CI=true: a missing prerequisite is fatal)")
	}
	t.Skip("wildcard binds run only in a Linux network namespace")
	return nil
}
