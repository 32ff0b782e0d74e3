package family

import (
	"strings"
	"testing"
	"time"

	"github.com/rotavault/rotavault/broker/notice"
)

// Every reason a notice or a record can carry explains itself: watchers and
// `credentials show` get a sentence, not a bare code.
func TestEveryRevocationReasonIsExplained(t *testing.T) {
	for _, r := range []notice.RevocationReason{
		notice.ReasonRefreshTokenRejected, notice.ReasonLostRotation, notice.ReasonAdminRevoked,
		notice.ReasonRevokedAtProvider, notice.ReasonCredentialDeleted, notice.ReasonClientRejected,
		notice.ReasonSuperseded,
	} {
		if RevocationDetail(r) == "" {
			t.Errorf("reason %q has no detail", r)
		}
	}
	if d := RevocationDetail("no_such_reason"); d != "" {
		t.Errorf("an unknown reason explained as %q", d)
	}
	if d := LostRotationDetail(0); d != RevocationDetail(notice.ReasonLostRotation) {
		t.Errorf("lost rotation without grace: %q", d)
	}
	if d := LostRotationDetail(30 * time.Second); !strings.Contains(d, "30s") {
		t.Errorf("lost rotation within a 30s grace: %q, want the grace named", d)
	}
}

// A family's key carries the credential's incarnation, so a credential
// deleted and created again never meets the old family's versions.
func TestFamilyKeyNamesTheIncarnation(t *testing.T) {
	if k := (&Credential{ID: "acme"}).FamilyKey(); k != "families/acme" {
		t.Errorf("key without incarnation %q", k)
	}
	if k := (&Credential{ID: "acme", Incarnation: "ab12"}).FamilyKey(); k != "families/acme/ab12" {
		t.Errorf("key with incarnation %q", k)
	}
	if k := CredentialKey("acme"); k != "credentials/acme" || !strings.HasPrefix(k, CredentialsPrefix) {
		t.Errorf("credential key %q", k)
	}
}
