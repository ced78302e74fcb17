// Package dnsname checks host and domain names as configuration accepts
// them: letters, digits and hyphens in dot-separated labels (RFC 1123
// §2.1 host names; RFC 1035 §2.3.4 lengths).
package dnsname

import (
	"errors"
	"fmt"
	"strings"
)

// Check accepts a DNS name made of LDH labels, with or without a trailing
// dot: each label 1 to 63 characters, the whole name at most 253. The
// error says which label is wrong and why.
func Check(d string) error {
	d = strings.TrimSuffix(d, ".")
	if d == "" {
		return errors.New("empty domain")
	}
	if len(d) > 253 {
		return errors.New("longer than 253 characters")
	}
	for _, l := range strings.Split(d, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("label %q: must be 1 to 63 characters", l)
		}
		for _, r := range l {
			if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return fmt.Errorf("label %q: only letters, digits and '-' allowed", l)
			}
		}
	}
	return nil
}
