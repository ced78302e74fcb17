package masque

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that every goroutine a Conn starts (its stream acceptor,
// QPACK drains, critical-stream watchers) ends with its connection.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
