// Package audit writes Rotavault's audit trail: one JSON object per line,
// appended and synced, recording rotations, revocations, reauthentications
// and admin changes. Records never contain a token or a secret.
//
// # Tamper evidence
//
// The trail is a keyed hash chain. Each line is one record:
//
//	{"seq":N,"prev":"<64 hex>","time":…,"actor":…,"action":…,…,"mac":"<64 hex>"}
//
// seq counts records from 1 with no gap; prev is the mac of the record
// before (64 zeros for seq 1); the Event's fields sit between prev and mac,
// so line-oriented tools (grep '"action":"rotated"') keep working. The mac
// is always the last field, written exactly as `,"mac":"` + 64 lowercase
// hex digits + `"}`, followed by "\n".
//
// The canonical bytes of a record are the exact bytes of its line with
// that 74-byte mac suffix replaced by "}" (and without the newline): the
// JSON object as written, minus the mac field. Then
//
//	mac = HMAC-SHA256(key, prev_mac || canonical bytes)
//
// where prev_mac is the 32 raw bytes of the previous record's mac (32 zero
// bytes for seq 1). A verifier never re-encodes anything: it cuts the
// suffix off the line it read and recomputes, so there is no ambiguity
// about field order, spacing or escaping, and any byte changed anywhere in
// the line (the mac's hex included: uppercase hex is refused) breaks it.
// Without the key nobody can write a record that verifies, so editing,
// deleting, reordering or inserting records, or rebuilding the chain with
// a plain hash, is detected.
//
// The key (32 random bytes) and the chain's head are kept in the
// store.Store next to the records the trail is about, not in the data
// directory beside the file: with the embedded store both are sealed under
// the store key, so write access to the data directory is not enough to
// rewrite the trail. The key is the record "audit/key", created on first
// open with a check-and-set write (replicas sharing a store share one key);
// it is never logged. A store backup carries it, and `rotavault store
// rotate-key` re-seals it like any other record.
//
// # The anchored head
//
// After records are synced to the file, the chain head {seq, mac} is
// written to the store (Config.HeadKey, "audit/head" by default) with a
// check-and-set write, so cutting records off the end of the file, or
// deleting the file, is detected: the file must reach the anchored head.
// The first head, seq 0, is written with the key (just before it), so a
// store holding the key but no head under DefaultHeadKey had its head
// deleted: Verify and Open refuse that (Open continues with
// Config.AcceptMissingAnchor, and records the acceptance). Under another
// head key — replicas writing their own files into one store — a replica
// with no head and no records is new and anchors its seq 0 on Open.
//
// A store copied back from a backup brings an older head back with it;
// only a witness kept elsewhere (Config.Witness, see WitnessLine) detects
// that.
// The anchor is written in the background, at most once per
// Config.AnchorInterval (a second by default), not on the path of the
// rotation that records an event; records newer than the last anchor are
// the window a truncation can remove undetected.
//
// The file is written first and the anchor second. If the anchor write
// fails (store unavailable), the record stays in the file — Record still
// returns nil, since the record is durable and the caller can do nothing
// better — the failure is logged, and the head lags: the next anchor, or
// Close, anchors the latest head. A verifier therefore accepts a file
// that extends past the anchor, provided every extra record chains, and
// reports how many records lie beyond it; records beyond the anchor are
// protected against editing, not against being cut off. A file that ends
// below the anchored seq, or whose record at the anchored seq has another
// mac, is an error. Concurrent records coalesce their anchor writes: one
// store write covers every record synced before it started.
//
// # Restart
//
// Open continues the chain: it reads the file's last record, checks its
// mac and that it is the anchored head (or, when the head lags, verifies
// the whole file against the anchor and re-anchors), and appends the next
// record with seq+1 and prev = that mac. Open refuses to start — it never
// silently begins a new chain — when the file is missing or shorter than
// the anchor, does not match it, ends in an incomplete line (a crash in
// the middle of a write that was never acknowledged: remove that partial
// line after inspecting it), or is not a chain at all (a trail written by
// a version before the chain: move it aside). An operator option to start
// a new chain segment after such a break, recorded as such in the trail,
// is not there yet; until then the operator moves the old file aside and
// deletes the head record deliberately.
//
// Open checks only the tail of a file whose head is current; the whole
// chain is checked by Verify (`rotavault audit verify`).
package audit

import (
	"context"
	"time"
)

// Actions recorded in the trail.
const (
	ActionRotated           = "rotated"
	ActionRefreshed         = "refreshed" // a refresh that returned no new refresh token (legacy app)
	ActionFamilyRevoked     = "family_revoked"
	ActionReauthenticated   = "reauthenticated"
	ActionSignatureMismatch = "signature_mismatch"
	ActionCredentialCreated = "credential_created"
	ActionCredentialUpdated = "credential_updated"
	ActionCredentialDeleted = "credential_deleted"
	ActionRescuedToken      = "rotated_token_held_in_memory"
	// ActionAnchorMissingAccepted: the server started over a trail whose
	// anchored head was missing, because the operator said so.
	ActionAnchorMissingAccepted = "audit_anchor_missing_accepted"
)

// Event is one audit record.
type Event struct {
	Time       time.Time `json:"time"`
	Actor      string    `json:"actor"`
	Action     string    `json:"action"`
	Credential string    `json:"credential"`
	Family     string    `json:"family,omitempty"`
	Generation uint64    `json:"generation,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Detail     string    `json:"detail,omitempty"`
}

type actorKey struct{}

// WithActor returns a context naming who acts, for the records written on its
// behalf.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// Actor returns the actor set by WithActor, or "system" (the server itself,
// e.g. a scheduled refresh).
func Actor(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}
