// Package fdlimit reads and raises the process's file-descriptor limit
// (RLIMIT_NOFILE, `ulimit -n`). Every forwarded flow holds one host socket
// and every session one more, so this limit, not memory, is often the first
// to cap a gateway: at the soft limit new flows are refused (the stack
// answers their SYN with a RST and counts netstack.Stats.DialNoFD).
package fdlimit

import (
	"fmt"
	"os"
	"syscall"
)

// Limits are the soft limit (what the process may open now) and the hard
// limit (the ceiling an unprivileged process may raise its soft limit to),
// in file descriptors.
type Limits struct {
	Soft uint64 `json:"soft"`
	Hard uint64 `json:"hard"`
}

// Get returns the current limits (getrlimit(2)).
func Get() (Limits, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return Limits{}, fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	return Limits{Soft: r.Cur, Hard: r.Max}, nil
}

// Raise sets the soft limit to the hard limit and returns the limits now in
// force. The Go runtime (1.19 on) already does this at start on Linux, so
// Raise usually changes nothing; it is explicit so that the binary states
// the limit it runs with, and so that an embedder that lowered it gets it
// back. On failure (setrlimit(2) refused) the limits are unchanged and
// returned with the error.
func Raise() (Limits, error) {
	l, err := Get()
	if err != nil || l.Soft >= l.Hard {
		return l, err
	}
	r := syscall.Rlimit{Cur: l.Hard, Max: l.Hard}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return l, fmt.Errorf("setrlimit RLIMIT_NOFILE to %d: %w", l.Hard, err)
	}
	return Get()
}

// Open returns how many file descriptors the process has open, from
// /proc/self/fd (Linux).
func Open() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	return len(ents) - 1, nil // ReadDir's own descriptor on the directory is listed too
}
