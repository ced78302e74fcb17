package auth

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Policy decides whether an authenticated identity may open (or keep
// resuming) a tunnel. It is evaluated at sign-in and again whenever a
// session is resumed from a cookie. A denial should be a *DeniedError so
// the user sees why.
type Policy interface {
	Check(ctx context.Context, id *Identity) error
}

// PolicyFunc adapts a function to Policy.
type PolicyFunc func(ctx context.Context, id *Identity) error

// Check implements Policy.
func (f PolicyFunc) Check(ctx context.Context, id *Identity) error { return f(ctx, id) }

// AllPolicies admits an identity only if every policy does (nil entries
// are skipped); the first denial is returned.
type AllPolicies []Policy

// Check implements Policy.
func (ps AllPolicies) Check(ctx context.Context, id *Identity) error {
	for _, p := range ps {
		if p == nil {
			continue
		}
		if err := p.Check(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

// ErrDenied is matched (errors.Is) by every *DeniedError.
var ErrDenied = errors.New("auth: access denied")

// DeniedError is a policy refusal. Reason is written for the end user
// (shown in the sign-in form); it never contains credentials.
type DeniedError struct {
	Reason string
}

func (e *DeniedError) Error() string { return "auth: access denied: " + e.Reason }

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// ClaimRule requires a token claim to be present and equal one of Values
// (exact, case-sensitive). A claim that is a list matches when any element
// does; booleans and numbers compare by their JSON text ("true", "1").
type ClaimRule struct {
	Claim  string
	Values []string
	// Methods limits the rule to identities established by these methods
	// (Identity.Method, e.g. "token", "password"); empty means all. Use it
	// so certificate or static users, which carry no claims, are not held
	// to a token-only rule.
	Methods []string
	// Reason is shown to the user on failure; default names the claim.
	Reason string
}

// Rules is the built-in policy. Evaluation order: deny users, deny
// groups, then (if any allow list is set) the identity must match an
// allowed user or an allowed group, then every required claim must hold.
// User names compare case-insensitively (they are often e-mail addresses);
// groups compare exactly (IdPs use opaque IDs). App roles
// (Identity.Roles) count as groups. A token whose groups were left out
// for overage (Identity.GroupsOverage) cannot pass a group rule: it is
// refused with OverageReason unless an allowed user or role admits it
// and no deny-groups rule exists.
type Rules struct {
	AllowUsers    []string
	AllowGroups   []string
	DenyUsers     []string
	DenyGroups    []string
	RequireClaims []ClaimRule
}

// OverageReason is the refusal for a token whose groups were left out.
const OverageReason = "groups overage: configure group filtering or an app role"

// Check implements Policy.
func (r *Rules) Check(_ context.Context, id *Identity) error {
	if id == nil {
		return &DeniedError{Reason: "not signed in"}
	}
	names := []string{id.User}
	if id.Email != "" && !strings.EqualFold(id.Email, id.User) {
		names = append(names, id.Email)
	}
	if matchUser(r.DenyUsers, names) {
		return &DeniedError{Reason: "your account is blocked from this VPN"}
	}
	groups := append(slices.Clip(id.Groups), id.Roles...)
	if len(r.DenyGroups) > 0 && id.GroupsOverage {
		return &DeniedError{Reason: OverageReason}
	}
	if g, ok := firstCommon(r.DenyGroups, groups); ok {
		return &DeniedError{Reason: fmt.Sprintf("members of group %q may not use this VPN", g)}
	}
	if len(r.AllowUsers) > 0 || len(r.AllowGroups) > 0 {
		_, inGroup := firstCommon(r.AllowGroups, groups)
		if !inGroup && !matchUser(r.AllowUsers, names) {
			if id.GroupsOverage && len(r.AllowGroups) > 0 {
				return &DeniedError{Reason: OverageReason}
			}
			return &DeniedError{Reason: "your account is not in a group allowed to use this VPN"}
		}
	}
	for _, cr := range r.RequireClaims {
		if len(cr.Methods) > 0 && !slices.Contains(cr.Methods, id.Method) {
			continue
		}
		if !claimMatches(id.Claims[cr.Claim], cr.Values) {
			reason := cr.Reason
			if reason == "" {
				reason = fmt.Sprintf("your sign-in does not meet the access requirement %q", cr.Claim)
			}
			return &DeniedError{Reason: reason}
		}
	}
	return nil
}

// ClaimNames lists the claims the rules read, so a sealed session can keep
// just those for re-checking on resume.
func (r *Rules) ClaimNames() []string {
	var out []string
	for _, cr := range r.RequireClaims {
		if !slices.Contains(out, cr.Claim) {
			out = append(out, cr.Claim)
		}
	}
	return out
}

func matchUser(list, names []string) bool {
	for _, u := range list {
		for _, n := range names {
			if n != "" && strings.EqualFold(u, n) {
				return true
			}
		}
	}
	return false
}

func firstCommon(list, groups []string) (string, bool) {
	for _, g := range groups {
		if slices.Contains(list, g) {
			return g, true
		}
	}
	return "", false
}

// claimMatches reports whether v (a decoded JSON value) equals one of
// want; with no want values, presence (non-nil, non-empty) suffices.
func claimMatches(v any, want []string) bool {
	switch t := v.(type) {
	case nil:
		return false
	case []any:
		for _, e := range t {
			if claimMatches(e, want) {
				return true
			}
		}
		return false
	case []string:
		for _, e := range t {
			if claimMatches(e, want) {
				return true
			}
		}
		return false
	}
	s, ok := claimString(v)
	if !ok {
		return false
	}
	if len(want) == 0 {
		return s != ""
	}
	return slices.Contains(want, s)
}

func claimString(v any) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case bool:
		return strconv.FormatBool(t), true
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64), true
	case int:
		return strconv.Itoa(t), true
	case int64:
		return strconv.FormatInt(t, 10), true
	}
	return "", false
}
