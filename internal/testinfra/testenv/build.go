package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// buildTimeout bounds one `go build`: a cold -race build of the gateway
// (gVisor is large) takes minutes on a 2-core machine.
const buildTimeout = 10 * time.Minute

type buildResult struct {
	once sync.Once
	path string
	err  error
}

var builds sync.Map // pkg -> *buildResult

// BuildBinary builds the main package pkg (an import path, or a path relative
// to the module root such as "./examples/standalone") once per test process
// and returns the binary's path. It builds with -race when the test binary
// does. Binaries go to a per-user cache directory, written via rename, so
// test processes running in parallel never see a half-written file.
func BuildBinary(t testing.TB, pkg string) string {
	t.Helper()
	return BuildBinaryLDFlags(t, pkg, "")
}

// BuildBinaryLDFlags is BuildBinary with go build's -ldflags, e.g.
// "-X main.buildVersion=v2" for a binary that says it is another release.
// Each pkg and ldflags pair is built once per test process.
func BuildBinaryLDFlags(t testing.TB, pkg, ldflags string) string {
	t.Helper()
	v, _ := builds.LoadOrStore(pkg+"\x00"+ldflags, &buildResult{})
	r := v.(*buildResult)
	r.once.Do(func() { r.path, r.err = build(pkg, ldflags) })
	if r.err != nil {
		t.Fatalf("testenv: %v", r.err)
	}
	return r.path
}

// ModuleRoot is the directory holding go.mod (found via `go env GOMOD`).
func ModuleRoot() (string, error) {
	out, err := exec.Command(goTool(), "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module")
	}
	return filepath.Dir(gomod), nil
}

// goTool finds the go command: PATH (go test puts its own GOROOT/bin first),
// else $GOROOT/bin/go.
func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if r := os.Getenv("GOROOT"); r != "" {
		return filepath.Join(r, "bin", "go")
	}
	return "go"
}

func build(pkg, ldflags string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "underpass-testenv", "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s\x00%s\x00%v", root, pkg, raceEnabled)
	if ldflags != "" {
		key += "\x00" + ldflags
	}
	sum := sha256.Sum256([]byte(key))
	out := filepath.Join(dir, filepath.Base(pkg)+"-"+hex.EncodeToString(sum[:6]))
	tmp := fmt.Sprintf("%s.tmp%d", out, os.Getpid())
	args := []string{"build", "-o", tmp}
	if raceEnabled {
		args = append(args, "-race")
	}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), append(args, pkg)...)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("go %s %s: %v\n%s", strings.Join(args, " "), pkg, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}
