package netstack

import (
	"errors"
	"syscall"
	"time"
)

// noFDLogEvery spaces the warnings about dials failing for lack of file
// descriptors: during an exhaustion every new flow fails, and one line a
// minute (with the count since the previous one) tells the operator without
// flooding the log; Stats.DialNoFD has the exact count.
const noFDLogEvery = time.Minute

// isNoFD reports whether err is the host refusing a new socket for lack
// of file descriptors: the process's RLIMIT_NOFILE (EMFILE) or the
// system-wide table (ENFILE), as socket(2) reports them.
func isNoFD(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// dialFailed accounts for an upstream dial that failed with err: a dial
// refused for lack of descriptors is counted apart and logged at Warn, at
// most once per noFDLogEvery.
func (s *Stack) dialFailed(proto string, err error) {
	if !isNoFD(err) {
		return
	}
	n := s.stats.dialNoFD.Add(1)
	now := time.Now().UnixNano()
	last := s.noFDLogged.Load()
	if last != 0 && now-last < int64(noFDLogEvery) || !s.noFDLogged.CompareAndSwap(last, now) {
		return
	}
	s.log.Warn("netstack: upstream dials fail for lack of file descriptors; raise the open-files limit (RLIMIT_NOFILE)",
		"proto", proto, "err", err, "dial_no_fd_total", n)
}
