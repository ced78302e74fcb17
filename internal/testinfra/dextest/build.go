package dextest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// EnvBinary names a prebuilt Dex binary to use instead of building one.
const EnvBinary = "UNDERPASS_DEX"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the path of a Dex binary, building it on first use. If
// it cannot, the test is skipped, or fails under CI=true.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() { buildPath, buildErr = ensureBinary() })
	if buildErr != nil {
		if inCI() {
			t.Fatalf("dextest: Dex unavailable (CI requires it): %v", buildErr)
		}
		t.Skipf("dextest: Dex unavailable: %v", buildErr)
	}
	return buildPath
}

// inCI matches scripts/deps.sh: CI=true, TRUE, 1 or yes.
func inCI() bool {
	switch os.Getenv("CI") {
	case "true", "TRUE", "1", "yes":
		return true
	}
	return false
}

// RepoRoot finds the repository root (the directory holding
// tools/dex/go.mod) from the working directory upwards; go test runs in
// the package directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "tools", "dex", "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("tools/dex/go.mod not found above the working directory")
		}
		dir = parent
	}
}

// BinaryPath is where the built Dex lives: <repo>/.cache/dex.
func BinaryPath() (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "dex"), nil
}

// ensureBinary builds Dex unless an up-to-date build exists. A file lock
// serialises builds between test binaries running in parallel (go test
// ./... runs packages concurrently); the stamp (a hash of tools/dex's
// go.mod and go.sum) rebuilds Dex when its pin changes.
func ensureBinary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%s: %w", EnvBinary, err)
		}
		return p, nil
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	toolDir := filepath.Join(root, "tools", "dex")
	cache := filepath.Join(root, ".cache")
	bin := filepath.Join(cache, "dex")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	stamp, err := pinStamp(toolDir)
	if err != nil {
		return "", err
	}
	lock, err := os.OpenFile(filepath.Join(cache, "dex.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer func() { _ = syscall.Flock(int(lock.Fd()), syscall.LOCK_UN) }()

	stampFile := bin + ".stamp"
	if old, err := os.ReadFile(stampFile); err == nil && string(old) == stamp {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	tmp := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", tmp, dexCmd)
	cmd.Dir = toolDir
	// CGO off: memory storage needs no sqlite, and the build needs no C
	// toolchain. GOWORK off: the tools module stands alone.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-buildvcs=false")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("go build %s: %v\n%s", dexCmd, err, out.String())
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", err
	}
	if err := os.WriteFile(stampFile, []byte(stamp), 0o644); err != nil {
		return "", err
	}
	return bin, nil
}

func pinStamp(toolDir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(toolDir, f))
		if err != nil {
			return "", err
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
