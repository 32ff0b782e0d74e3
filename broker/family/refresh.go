package family

import (
	"errors"
	"time"

	"github.com/rotavault/rotavault/broker/brokererr"
	"github.com/rotavault/rotavault/broker/notice"
	"github.com/rotavault/rotavault/provider"
)

// Outcome is what the provider's answer to a refresh means.
type Outcome int

const (
	OutcomeOK Outcome = iota
	// OutcomeFailed: no classified provider answer (a bug or a local
	// failure before sending).
	OutcomeFailed
	// OutcomeClientRejected: the provider refused the client (invalid_client,
	// inactive_user, inactive_org), not the token.
	OutcomeClientRejected
	// OutcomeTokenRejected: invalid_grant.
	OutcomeTokenRejected
	// OutcomeUnknown: the provider may have rotated (timeout, reset after
	// sending, 5xx).
	OutcomeUnknown
	// OutcomeNotProcessed: surely not processed, or refused for now (429,
	// 503 without a body, connection refused): safe to retry.
	OutcomeNotProcessed
)

var outcomeNames = [...]string{"ok", "failed", "client_rejected", "token_rejected", "unknown", "not_processed"}

func (o Outcome) String() string { return outcomeNames[o] }

// Classify says what a provider answer to a refresh means.
func Classify(err error) (Outcome, *provider.Error) {
	if err == nil {
		return OutcomeOK, nil
	}
	var pe *provider.Error
	switch {
	case !errors.As(err, &pe):
		return OutcomeFailed, nil
	case pe.Outcome == provider.OutcomeRejected && pe.Permanent() && errors.Is(err, provider.ErrInvalidGrant):
		return OutcomeTokenRejected, pe
	case pe.Outcome == provider.OutcomeRejected && pe.Permanent():
		return OutcomeClientRejected, pe
	case pe.Outcome == provider.OutcomeUnknown:
		return OutcomeUnknown, pe
	}
	return OutcomeNotProcessed, pe
}

// Action is what the refresh loop does with an answer.
type Action int

const (
	// ActionStore stores the new tokens (persist first, answer later).
	ActionStore Action = iota
	// ActionRevoke revokes the family for the decision's reason.
	ActionRevoke
	// ActionRecheckClient re-reads the credential once (another replica may
	// have fixed the client secret) and retries if it changed.
	ActionRecheckClient
	// ActionRetry waits (backoff) and presents the token again.
	ActionRetry
	// ActionGiveUp releases the claim and returns the decision's error.
	ActionGiveUp
)

var actionNames = [...]string{"store", "revoke", "recheck_client", "retry", "give_up"}

func (a Action) String() string { return actionNames[a] }

// Attempt is what the decision about one answer depends on, besides
// the answer.
type Attempt struct {
	// State is the family's: StateClaimed, or StateInDoubt.
	State State
	// N counts the attempts before this one.
	N int
	// Now, and UnknownSince: when this refresh first met an unknown outcome
	// (zero before).
	Now, UnknownSince time.Time
	// ClientRechecked: the credential was re-read after a client refusal.
	ClientRechecked bool
	// Grace is the provider's reuse grace period (0: none).
	Grace time.Duration
	// NotProcessedTries bounds the attempts answered "not processed".
	NotProcessedTries int
}

// Decision is what to do about one answer.
type Decision struct {
	Outcome Outcome
	Action  Action
	// MarkInDoubt: record the doubt in the store before acting (and before
	// a crash could forget it).
	MarkInDoubt bool
	// Reason, for ActionRevoke.
	Reason notice.RevocationReason
	// BackoffAtLeast, for ActionRetry: the provider's Retry-After.
	BackoffAtLeast time.Duration
	// Err is the caller's error for ActionGiveUp (and for
	// ActionRecheckClient when the credential did not change).
	Err error
}

// Decide is the refresh policy: a pure function of the attempt and
// the provider's answer (TestDecideRefresh is its table).
func Decide(a Attempt, answer error) Decision {
	outcome, pe := Classify(answer)
	d := Decision{Outcome: outcome}
	unavailable := func(retryAfter time.Duration) error {
		return &brokererr.UnavailableError{Component: brokererr.ComponentProvider, RetryAfter: retryAfter, Err: answer}
	}
	switch outcome {
	case OutcomeOK:
		d.Action = ActionStore
	case OutcomeFailed:
		d.Action, d.Err = ActionGiveUp, unavailable(time.Second)
	case OutcomeClientRejected:
		// The provider refused the client (wrong secret, inactive user or
		// org), not the token: the refresh token may work again once an
		// admin fixes it. Keep it; never destroy a working token.
		d.Action = ActionGiveUp
		if !a.ClientRechecked {
			d.Action = ActionRecheckClient
		}
		d.Err = brokererr.ClientRejected(pe, "when refreshing")
	case OutcomeTokenRejected:
		d.Action, d.Reason = ActionRevoke, notice.ReasonRefreshTokenRejected
		if a.State == StateInDoubt {
			// Our own earlier refresh probably rotated the token and its
			// answer never arrived: a lost rotation, not theft.
			d.Reason = notice.ReasonLostRotation
		}
	case OutcomeUnknown:
		// Remember before retrying: if we crash, the next refresh must still
		// know an invalid_grant is probably our own lost rotation.
		d.MarkInDoubt = a.State != StateInDoubt
		// With no grace period a retry is a reuse if the provider did
		// rotate: allow exactly one, to learn the truth. Within a grace
		// period the previous token is still accepted: retry inside it.
		since := time.Duration(0)
		if !a.UnknownSince.IsZero() {
			since = a.Now.Sub(a.UnknownSince)
		}
		d.Action, d.Err = ActionGiveUp, unavailable(time.Second)
		if a.N == 0 || (a.Grace > 0 && since < a.Grace/2) {
			d.Action, d.Err = ActionRetry, nil
		}
	case OutcomeNotProcessed:
		// Not processed or a temporary refusal: safe to retry, never a
		// revocation.
		d.Action, d.BackoffAtLeast = ActionRetry, pe.RetryAfter
		if a.N+1 >= a.NotProcessedTries {
			d.Action, d.BackoffAtLeast, d.Err = ActionGiveUp, 0, unavailable(max(pe.RetryAfter, time.Second))
		}
	}
	return d
}

// ProviderDetail is the provider error for the family record and the audit
// trail, which cannot be edited: the OAuth code only, no provider text, even
// redacted (the log line carries the redacted description).
func ProviderDetail(err error) string {
	var pe *provider.Error
	if errors.As(err, &pe) {
		return pe.Summary()
	}
	return err.Error()
}
