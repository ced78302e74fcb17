package fdlimit

import (
	"os"
	"syscall"
	"testing"
)

// TestRaise lowers the soft limit (as a service manager or an embedder
// might) and checks Raise brings it back to the hard limit; Get reports
// both as getrlimit does.
func TestRaise(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
			t.Errorf("restoring RLIMIT_NOFILE: %v", err)
		}
	})
	if orig.Max < 512 {
		t.Fatalf("hard limit %d: too low to lower the soft one below it in this test", orig.Max)
	}
	low := syscall.Rlimit{Cur: 256, Max: orig.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	if l, err := Get(); err != nil || l != (Limits{Soft: 256, Hard: orig.Max}) {
		t.Fatalf("Get = %+v, %v; want soft 256, hard %d", l, err, orig.Max)
	}
	l, err := Raise()
	if err != nil || l != (Limits{Soft: orig.Max, Hard: orig.Max}) {
		t.Fatalf("Raise = %+v, %v; want soft = hard = %d", l, err, orig.Max)
	}
	var now syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now); err != nil || now.Cur != orig.Max {
		t.Fatalf("after Raise getrlimit says soft %d (%v), want %d", now.Cur, err, orig.Max)
	}
}

// TestOpen counts a descriptor opened and closed.
func TestOpen(t *testing.T) {
	n0, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	n1, err := Open()
	f.Close()
	if err != nil || n1 != n0+1 {
		t.Fatalf("Open = %d (%v) with one more file open, want %d", n1, err, n0+1)
	}
}
