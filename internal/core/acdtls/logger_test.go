package acdtls

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

func TestPionLogger(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lg := PionLogger(l).NewLogger("dtls")
	lg.Tracef("hidden %d", 1) // below Debug
	lg.Debugf("flight %d", 4)
	lg.Info("info")
	lg.Warnf("warn %s", "x")
	lg.Error("boom")
	out := buf.String()
	for _, want := range []string{
		`level=DEBUG msg="flight 4" scope=dtls`,
		`level=INFO msg=info scope=dtls`,
		`level=WARN msg="warn x" scope=dtls`,
		`level=ERROR msg=boom scope=dtls`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") {
		t.Errorf("trace line logged at debug level:\n%s", out)
	}

	// nil: a discarding factory, not pion's stderr default.
	d := PionLogger(nil).NewLogger("dtls")
	d.Errorf("nothing %d", 1)
	d.Trace("nothing")
	if n := testing.AllocsPerRun(10, func() { d.Info("x") }); n != 0 {
		t.Errorf("discard logger allocates %v", n)
	}
}
