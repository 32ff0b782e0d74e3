// Package audit writes Rotavault's audit trail: one JSON object per line,
// appended and synced, recording rotations, revocations, reauthentications
// and admin changes. Records never contain a token or a secret.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
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

// FileLog appends events to a JSON-lines file. Safe for concurrent use.
type FileLog struct {
	mu   sync.Mutex
	file *os.File
}

// OpenFile opens (or creates, mode 0600) the audit file for appending.
func OpenFile(path string) (*FileLog, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: open: %w", err)
	}
	return &FileLog{file: f}, nil
}

// Record appends e and syncs the file, so a record survives a crash once
// Record returned nil.
func (l *FileLog) Record(_ context.Context, e Event) error {
	line, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("audit: encode: %w", err)
	}
	line = append(line, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return fmt.Errorf("audit: closed")
	}
	if _, err := l.file.Write(line); err != nil {
		return fmt.Errorf("audit: write: %w", err)
	}
	if err := l.file.Sync(); err != nil {
		return fmt.Errorf("audit: sync: %w", err)
	}
	return nil
}

// Close closes the file.
func (l *FileLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}
