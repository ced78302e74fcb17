package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("listen: \"127.0.0.1:9443\"\nsplit_include: [10.0.0.0/8]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("mtu: 1\nsplit_include: [0.0.0.0/0]\nbogus: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		stdin  string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{"no args", nil, "", exitUsage, "", "usage:"},
		{"unknown", []string{"frobnicate"}, "", exitUsage, "", "unknown command"},
		{"help", []string{"help"}, "", exitOK, "usage:", ""},
		{"check good", []string{"check", "config", good}, "", exitOK, "OK", ""},
		{"check bad", []string{"check", "config", bad}, "", exitConfig, "", "bogus"},
		{"check missing", []string{"check", "config", filepath.Join(dir, "nope.yaml")}, "", exitConfig, "", "no such file"},
		{"hash", []string{"hash-password", "-cost", "4"}, "s3cret\n", exitOK, "$2a$04$", ""},
		{"hash empty", []string{"hash-password"}, "\n", exitUsage, "", "empty password"},
		{"hash bad cost", []string{"hash-password", "-cost", "40"}, "x\n", exitUsage, "", "out of range"},
		{"serve bad config", []string{"serve", "-config", bad}, "", exitConfig, "", "mtu: 1 out of range"},
		{"serve bad flag", []string{"serve", "-nope"}, "", exitUsage, "", "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, strings.NewReader(tt.stdin), &out, &errb)
			if code != tt.code || !strings.Contains(out.String(), tt.stdout) || !strings.Contains(errb.String(), tt.stderr) {
				t.Fatalf("exit %d (want %d)\nstdout: %s\nstderr: %s", code, tt.code, out.String(), errb.String())
			}
			if tt.name == "hash" {
				if err := bcrypt.CompareHashAndPassword([]byte(strings.TrimSpace(out.String())), []byte("s3cret")); err != nil {
					t.Errorf("hash does not verify: %v", err)
				}
			}
		})
	}
}
