package dnsname

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"corp.example", true},
		{"corp.example.", true},
		{"a-1.b2", true},
		{"vpn", true},
		{"", false},
		{".", false},
		{"a..b", false},
		{"under_score.example", false},
		{"*.example", false},
		{"ex ample", false},
		{strings.Repeat("a", 63) + ".example", true},
		{strings.Repeat("a", 64) + ".example", false},
		{strings.Repeat("a.", 126) + "ab", false}, // 254 characters
	} {
		if err := Check(tc.name); (err == nil) != tc.ok {
			t.Errorf("Check(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
