package vaultstore

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"

	vault "github.com/hashicorp/vault/api"
)

// ErrUndecryptable: a record's envelope does not open (tampered, moved to
// another key, or sealed under a Transit key this store cannot use).
var ErrUndecryptable = errors.New("vaultstore: record cannot be decrypted")

// envelope encrypts record values under data keys that Vault's Transit
// engine wraps: with it, a Vault operator who can read the KV path sees only
// ciphertext and a wrapped key; reading the tokens also takes the right to
// decrypt with the Transit key. One data key per process; unwrapped keys are
// cached, so a read costs a Transit call only for data keys it has not seen.
type envelope struct {
	mount, key string
	current    dataKey

	mu     sync.Mutex
	opened map[string]cipher.AEAD // wrapped data key → AEAD
}

type dataKey struct {
	wrapped string
	aead    cipher.AEAD
}

// dataKeyAEAD builds the AEAD of the data key in a Transit answer's
// "plaintext" field (base64 of 32 bytes); ok is false for anything else.
func dataKeyAEAD(secret *vault.Secret) (aead cipher.AEAD, ok bool, err error) {
	plain, _ := secret.Data["plaintext"].(string)
	raw, err := base64.StdEncoding.DecodeString(plain)
	if err != nil || len(raw) != 32 {
		return nil, false, nil
	}
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, false, err
	}
	aead, err = cipher.NewGCMWithRandomNonce(block)
	return aead, err == nil, err
}

func (s *Store) newEnvelope(ctx context.Context, mount, key string) (*envelope, error) {
	env := &envelope{mount: mount, key: key, opened: make(map[string]cipher.AEAD)}
	var secret *vault.Secret
	err := s.do(ctx, func() (err error) {
		secret, err = s.client.Logical().WriteWithContext(ctx, mount+"/datakey/plaintext/"+key, map[string]any{"bits": 256})
		return err
	})
	if err != nil || secret == nil {
		return nil, fmt.Errorf("vaultstore: Transit data key from %s/keys/%s (is the engine mounted, the key created, and update allowed on %s/datakey/plaintext/%s and %s/decrypt/%s?): %w",
			mount, key, mount, key, mount, key, safeVaultError(err))
	}
	wrapped, _ := secret.Data["ciphertext"].(string)
	aead, ok, err := dataKeyAEAD(secret)
	if err != nil {
		return nil, err
	}
	if !ok || wrapped == "" {
		return nil, errors.New("vaultstore: Transit returned a malformed data key")
	}
	env.current = dataKey{wrapped: wrapped, aead: aead}
	// Prove at start-up that decrypting works too; this caches the key.
	if _, err := s.unwrap(ctx, env, wrapped, true); err != nil {
		return nil, err
	}
	return env, nil
}

// seal encrypts value for path; the path is authenticated, so a ciphertext
// copied to another record does not open.
func (env *envelope) seal(path string, value []byte) map[string]any {
	ct := env.current.aead.Seal(nil, nil, value, []byte(path))
	return map[string]any{"sealed": base64.StdEncoding.EncodeToString(ct), "dek": env.current.wrapped}
}

func (s *Store) open(ctx context.Context, env *envelope, path string, data map[string]any) ([]byte, error) {
	sealed, _ := data["sealed"].(string)
	wrapped, _ := data["dek"].(string)
	ct, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || wrapped == "" {
		return nil, ErrUndecryptable
	}
	aead, err := s.unwrap(ctx, env, wrapped, false)
	if err != nil {
		return nil, err
	}
	value, err := aead.Open(nil, nil, ct, []byte(path))
	if err != nil {
		return nil, ErrUndecryptable
	}
	return value, nil
}

func (s *Store) unwrap(ctx context.Context, env *envelope, wrapped string, force bool) (cipher.AEAD, error) {
	env.mu.Lock()
	aead, ok := env.opened[wrapped]
	env.mu.Unlock()
	if ok && !force {
		return aead, nil
	}
	var secret *vault.Secret
	err := s.do(ctx, func() (err error) {
		secret, err = s.client.Logical().WriteWithContext(ctx, env.mount+"/decrypt/"+env.key, map[string]any{"ciphertext": wrapped})
		return err
	})
	if err != nil || secret == nil {
		return nil, fmt.Errorf("%w: Transit decrypt: %w", ErrUndecryptable, safeVaultError(err))
	}
	aead, ok, err = dataKeyAEAD(secret)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, ErrUndecryptable
	}
	env.mu.Lock()
	env.opened[wrapped] = aead
	env.mu.Unlock()
	return aead, nil
}
