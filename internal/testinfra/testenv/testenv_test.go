package testenv

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testCtx bounds one self-test step: everything here is local and takes ms.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestNetnsLinkExec(t *testing.T) {
	a, b := NewNetns(t, "a"), NewNetns(t, "b")
	if !strings.HasPrefix(a.Name, NetnsPrefix) || a.Name == b.Name {
		t.Fatalf("names %q %q", a.Name, b.Name)
	}
	aIf, bIf := Link(t, a, b, netip.MustParsePrefix("198.18.7.1/30"), netip.MustParsePrefix("198.18.7.2/30"))
	if len(aIf) > 15 || len(bIf) > 15 {
		t.Fatalf("interface names too long: %q %q", aIf, bIf)
	}
	out, err := a.Exec(testCtx(t), "ip", "-br", "addr").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "198.18.7.1/30") || !strings.Contains(string(out), "lo ") {
		t.Fatalf("ip addr in %s: %v\n%s", a.Name, err, out)
	}
	if strings.Contains(string(out), "198.18.7.2") {
		t.Fatalf("b's address visible in a:\n%s", out)
	}
	// In-process listen in b, dial from a.
	l, err := b.Listen("tcp", "198.18.7.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := a.Dial(testCtx(t), "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := c.Read(buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q %v", buf, err)
	}
	c.Close()
	// The test process itself stays in the root namespace.
	if _, err := b.Dial(testCtx(t), "tcp", l.Addr().String()); err != nil {
		t.Fatalf("dial from b itself: %v", err)
	}
}

func TestProcCleanup(t *testing.T) {
	var name string
	var pid int
	t.Run("inner", func(t *testing.T) {
		ns := NewNetns(t, "proc")
		name = ns.Name
		p := ns.Start(t, "sh", "-c", "echo started; sleep 600 & sleep 600")
		pid = p.Pid()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(p.Output(), "started") {
			if time.Now().After(deadline) {
				t.Fatal("no output")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if got := ns.Pids(); len(got) < 2 {
			t.Fatalf("pids in ns: %v", got)
		}
	})
	if _, err := os.Stat("/run/netns/" + name); !os.IsNotExist(err) {
		t.Fatalf("netns %s still exists: %v", name, err)
	}
	if err := syscallKill0(pid); err == nil {
		t.Fatalf("pid %d still alive", pid)
	}
}

func TestTopologyHTTP(t *testing.T) {
	RequireTool(t, "curl")
	tp := Topology(t)
	base := tp.ServeHTTP(t, 0)
	// gw reaches corp directly...
	body, err := Curl(testCtx(t), tp.GW, base+"/")
	if err != nil || body != CorpPage {
		t.Fatalf("gw -> corp: %q %v", body, err)
	}
	got, err := Curl(testCtx(t), tp.GW, base+"/bytes?n=100000")
	if err != nil || !bytes.Equal([]byte(got), Pattern(100000)) {
		t.Fatalf("/bytes: len %d err %v", len(got), err)
	}
	who, err := Curl(testCtx(t), tp.GW, base+"/whoami")
	if err != nil || who != GWCorpAddr.String() {
		t.Fatalf("/whoami = %q, %v", who, err)
	}
	// ...the client does not, even with forwarding on in gw.
	tp.EnableForwarding(t, netip.MustParsePrefix("198.18.0.0/30"))
	if body, err := Curl(testCtx(t), tp.Client, base+"/", "--max-time", "2"); err == nil {
		t.Fatalf("client reached corp without a tunnel: %q", body)
	}
}

func TestParseShellAssignments(t *testing.T) {
	m := parseShellAssignments("COOKIE='a b'\\''c'\nHOST='198.18.0.2'\nFINGERPRINT='pin-sha256:x='\n")
	if m["COOKIE"] != "a b'c" || m["HOST"] != "198.18.0.2" || m["FINGERPRINT"] != "pin-sha256:x=" {
		t.Fatalf("%q", m)
	}
}

func TestPatternReader(t *testing.T) {
	var b bytes.Buffer
	r := &patternReader{}
	for _, n := range []int{1, 7, 300, 1000} { // odd sizes cross period boundaries
		p := make([]byte, n)
		r.Read(p)
		b.Write(p)
	}
	if !bytes.Equal(b.Bytes(), Pattern(b.Len())) {
		t.Fatal("pattern reader drifts across reads")
	}
}

func syscallKill0(pid int) error { return syscall.Kill(pid, 0) }

func TestBuildBinaryInNetns(t *testing.T) {
	bin := BuildBinary(t, "./internal/testinfra/testenv/testdata/hello")
	if again := BuildBinary(t, "./internal/testinfra/testenv/testdata/hello"); again != bin {
		t.Fatalf("not cached: %s != %s", again, bin)
	}
	ns := NewNetns(t, "bin")
	p := ns.Start(t, bin)
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := p.Output(); got != "hello from a namespace with 1 interfaces\n" { // only lo
		t.Fatalf("output %q", got)
	}
}
