package auth_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/underpass/underpass/auth"
	"golang.org/x/crypto/bcrypt"
)

// Example shows the gateway's use of the package: the ban gate before any
// TLS/auth work, the authenticator chain, the policy with a readable
// denial, and a sealed cookie that any gateway of the site can resume
// (re-checking the policy). With an IdP the chain would be
// Chain{oidc, passwordGrant, certs} (see NewOIDC, OIDC.PasswordGrant,
// NewCertificates).
func Example() {
	ctx := context.Background()
	hash := func(pw string) string {
		h, _ := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
		return string(h)
	}
	static, _ := auth.NewStaticUsers([]auth.StaticUser{
		{Name: "alice", Hash: hash("alice-pw"), Groups: []string{"vpn-users"}},
		{Name: "bob", Hash: hash("bob-pw"), Groups: []string{"staff"}},
	})
	authn := auth.Chain{static}
	policy := &auth.Rules{AllowGroups: []string{"vpn-users"}}
	bans := auth.NewBans(auth.BanConfig{Threshold: 4})
	key, _ := auth.ParseSealerKey(auth.GenerateSealerKey())
	sealer, _ := auth.NewSealer(nil, key)

	signIn := func(c auth.Credentials) (cookie string, err error) {
		if bans.Banned(c.RemoteAddr) { // before the TLS handshake where possible
			return "", errors.New("too many failed sign-ins, try again later")
		}
		id, err := authn.Authenticate(ctx, c)
		if err != nil {
			if errors.Is(err, auth.ErrInvalidCredentials) || errors.Is(err, auth.ErrNotApplicable) {
				bans.AddFailure(c.RemoteAddr, 0) // not for ErrUnavailable: not the client's fault
			}
			return "", err
		}
		if err := policy.Check(ctx, id); err != nil {
			return "", err // *DeniedError: show Reason in the form
		}
		now := time.Now()
		exp := now.Add(8 * time.Hour) // session timeout...
		if !id.Expiry.IsZero() && id.Expiry.Before(exp) {
			exp = id.Expiry // ...capped by the token's expiry
		}
		return sealer.Seal(auth.NewSessionClaims(id, policy.ClaimNames(), now, exp))
	}
	resume := func(cookie string) error {
		sc, err := sealer.Open(cookie)
		if err != nil {
			return err // ErrSessionInvalid / ErrSessionExpired: sign in again
		}
		// (check sc.ID against the revocation list here)
		return policy.Check(ctx, sc.Identity())
	}

	ip := netip.MustParseAddr("192.0.2.10")
	cookie, err := signIn(auth.Credentials{Username: "alice", Password: "alice-pw", RemoteAddr: ip})
	fmt.Println("alice:", err, resume(cookie))
	_, err = signIn(auth.Credentials{Username: "bob", Password: "bob-pw", RemoteAddr: ip})
	var de *auth.DeniedError
	if errors.As(err, &de) {
		fmt.Println("bob:", de.Reason)
	}
	for range 2 { // 2 points each: the second reaches Threshold 4
		_, err = signIn(auth.Credentials{Username: "alice", Password: "guess", RemoteAddr: ip})
	}
	fmt.Println("guessing:", err, bans.Banned(ip))
	// Output:
	// alice: <nil> <nil>
	// bob: your account is not in a group allowed to use this VPN
	// guessing: auth: invalid credentials: wrong user name or password true
}
