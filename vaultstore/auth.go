package vaultstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
	"github.com/hashicorp/vault/api/auth/approle"
	"github.com/hashicorp/vault/api/auth/kubernetes"
)

// LoginMethod logs the store in to Vault. Create one with AppRole or
// Kubernetes; a nil LoginMethod uses the token from the environment.
type LoginMethod interface {
	login(ctx context.Context, c *vault.Client) (*vault.Secret, error)
	name() string
}

type authMethod struct {
	method vault.AuthMethod
	kind   string
}

func (a authMethod) login(ctx context.Context, c *vault.Client) (*vault.Secret, error) {
	return c.Auth().Login(ctx, a.method)
}

func (a authMethod) name() string { return a.kind }

// AppRole logs in with a role id and the secret id read from secretIDFile
// (re-read at every login, so a rotated secret id is picked up). mount is
// the auth mount path ("" = "approle").
func AppRole(roleID, secretIDFile, mount string) (LoginMethod, error) {
	var opts []approle.LoginOption
	if mount != "" {
		opts = append(opts, approle.WithMountPath(mount))
	}
	m, err := approle.NewAppRoleAuth(roleID, &approle.SecretID{FromFile: secretIDFile}, opts...)
	if err != nil {
		return nil, fmt.Errorf("vaultstore: approle: %w", err)
	}
	return authMethod{method: m, kind: "approle"}, nil
}

// Kubernetes logs in with the pod's service-account token (tokenPath ""
// = the standard path) under the given Vault role, re-reading the token at
// every login. mount "" = "kubernetes".
func Kubernetes(role, tokenPath, mount string) (LoginMethod, error) {
	if tokenPath == "" {
		tokenPath = defaultServiceAccountTokenPath
	}
	k := kubernetesLogin{role: role, tokenPath: tokenPath, mount: mount}
	// Built once now only so that a missing role or unreadable token fails
	// at start-up.
	if _, err := k.method(); err != nil {
		return nil, err
	}
	return k, nil
}

// defaultServiceAccountTokenPath is where Kubernetes mounts a pod's token.
const defaultServiceAccountTokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// kubernetesLogin builds vault/api's Kubernetes method afresh at each login
// from the token file read then: the kubelet rotates projected
// service-account tokens (about hourly by default) and the old one expires
// soon after, so a token read at start-up would later fail to log in. The
// file is read here rather than by vault/api so that a trailing newline (a
// token file written by hand) is trimmed.
type kubernetesLogin struct {
	role, tokenPath, mount string
}

func (k kubernetesLogin) method() (*kubernetes.KubernetesAuth, error) {
	raw, err := os.ReadFile(k.tokenPath)
	if err != nil {
		return nil, fmt.Errorf("vaultstore: kubernetes auth: reading the service-account token: %w", err)
	}
	opts := []kubernetes.LoginOption{kubernetes.WithServiceAccountToken(strings.TrimSpace(string(raw)))}
	if k.mount != "" {
		opts = append(opts, kubernetes.WithMountPath(k.mount))
	}
	m, err := kubernetes.NewKubernetesAuth(k.role, opts...)
	if err != nil {
		return nil, fmt.Errorf("vaultstore: kubernetes auth: %w", err)
	}
	return m, nil
}

func (k kubernetesLogin) login(ctx context.Context, c *vault.Client) (*vault.Secret, error) {
	m, err := k.method()
	if err != nil {
		return nil, err
	}
	return c.Auth().Login(ctx, m)
}

func (k kubernetesLogin) name() string { return "kubernetes" }

// loginNow logs in and hands the new token to the keeper. seen is the login
// generation the caller observed failing: when another goroutine has logged
// in since, nothing is done.
func (s *Store) loginNow(ctx context.Context, seen uint64) error {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	if s.authGen != seen {
		return nil
	}
	secret, err := s.login.login(ctx, s.client)
	if err != nil {
		return fmt.Errorf("vaultstore: %s login: %w", s.login.name(), err)
	}
	if secret == nil || secret.Auth == nil {
		return fmt.Errorf("vaultstore: %s login returned no token", s.login.name())
	}
	s.authGen++
	s.logins.Add(1)
	s.log.InfoContext(ctx, "logged in to Vault", "method", s.login.name(), "ttl", time.Duration(secret.Auth.LeaseDuration)*time.Second)
	select {
	case s.newSecret <- secret:
	default:
		// The keeper has a newer secret queued already; replace it.
		select {
		case <-s.newSecret:
		default:
		}
		s.newSecret <- secret
	}
	return nil
}

func (s *Store) authGeneration() uint64 {
	s.authMu.Lock()
	defer s.authMu.Unlock()
	return s.authGen
}

// do runs op, and once more after a fresh login when Vault refused the
// token (revoked or expired before renewal noticed): callers never see an
// expired token as a failure.
func (s *Store) do(ctx context.Context, op func() error) error {
	gen := s.authGeneration()
	err := op()
	if err == nil || s.login == nil || !isPermissionDenied(err) {
		return err
	}
	s.log.WarnContext(ctx, "Vault refused the token; logging in again")
	if lerr := s.loginNow(ctx, gen); lerr != nil {
		return errors.Join(err, lerr)
	}
	return op()
}

func isPermissionDenied(err error) bool {
	var re *vault.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusForbidden
}

// keepAuthenticated renews the store's token for as long as the store is
// open, and logs in afresh when renewal ends (max TTL reached) or fails.
func (s *Store) keepAuthenticated(ctx context.Context, secret *vault.Secret) {
	for {
		var done <-chan error
		var w *vault.LifetimeWatcher
		if secret != nil && secret.Auth != nil && secret.Auth.Renewable {
			var err error
			w, err = s.client.NewLifetimeWatcher(&vault.LifetimeWatcherInput{Secret: secret})
			if err != nil {
				s.log.ErrorContext(ctx, "cannot renew the Vault token", "err", err)
			} else {
				go w.Start()
				done = w.DoneCh()
			}
		}
		select {
		case <-ctx.Done():
			if w != nil {
				w.Stop()
			}
			return
		case secret = <-s.newSecret:
			if w != nil {
				w.Stop()
			}
		case err := <-done:
			s.log.InfoContext(ctx, "Vault token renewal ended; logging in again", "err", err)
			if s.login == nil {
				secret = nil // a static token: nothing more to do
				continue
			}
			for attempt := 0; ; attempt++ {
				if err := s.loginNow(ctx, s.authGeneration()); err == nil {
					break
				} else {
					s.log.ErrorContext(ctx, "Vault login failed; retrying", "err", err)
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(min(time.Second<<min(attempt, 5), 30*time.Second)):
				}
			}
			secret = <-s.newSecret
		}
	}
}

// tokenSecret describes the environment's token for renewal, when it is
// renewable. A token that may not look itself up fails with
// ErrMissingPolicy: it could never be renewed, and would stop working when
// its TTL ran out, long after start-up.
func (s *Store) tokenSecret(ctx context.Context) (*vault.Secret, error) {
	self, err := s.client.Auth().Token().LookupSelfWithContext(ctx)
	if isPermissionDenied(err) {
		return nil, fmt.Errorf("%w: read on auth/token/lookup-self, to renew the token", ErrMissingPolicy)
	}
	if err != nil || self == nil {
		return nil, nil
	}
	renewable, _ := self.Data["renewable"].(bool)
	ttl, _ := self.Data["ttl"].(json.Number)
	secs, _ := ttl.Int64()
	if !renewable || secs <= 0 {
		return nil, nil
	}
	return &vault.Secret{Auth: &vault.SecretAuth{ClientToken: s.client.Token(), Renewable: true, LeaseDuration: int(secs)}}, nil
}
