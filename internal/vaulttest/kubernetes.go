package vaulttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// KubernetesAPI stands in for the one part of a Kubernetes API server that
// Vault's kubernetes auth method calls: the TokenReview API. No API server
// can run on the test machines (there is no binary, and none can be built
// or downloaded), yet the auth method is only honestly tested with a real
// Vault asking someone whether a service-account JWT is valid. This answers
// as the API server does: authenticated for the JWTs it issued and has not
// invalidated, unauthenticated for any other, and 401 Unauthorized for a
// reviewer that does not present the token-reviewer JWT it handed Vault.
type KubernetesAPI struct {
	URL string // http://127.0.0.1:PORT, what kubernetes_host names

	key         *ecdsa.PrivateKey
	reviewerJWT string

	mu       sync.Mutex
	valid    map[string]ServiceAccount
	reviewed []string
}

// ServiceAccount identifies a Kubernetes service account.
type ServiceAccount struct {
	Namespace, Name, UID string
}

func (sa ServiceAccount) username() string {
	return "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
}

// StartKubernetesAPI starts the stand-in on a free loopback port and stops
// it when the test ends.
func StartKubernetesAPI(t testing.TB) *KubernetesAPI {
	t.Helper()
	// Vault's kubernetes plugin accepts RS*, ES* and PS* JWTs only (never
	// HS256 or none). It verifies no signature unless pem_keys are
	// configured — the TokenReview is the check — but the JWT must still be
	// a well-formed signed one.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := &KubernetesAPI{key: key, valid: map[string]ServiceAccount{}}
	// The reviewer's own token, as Vault outside a cluster is configured
	// with (token_reviewer_jwt): it may call TokenReview, it is not a login.
	k.reviewerJWT = k.sign(t, ServiceAccount{Namespace: "kube-system", Name: "vault-auth", UID: randomUID()})

	srv := httptest.NewServer(http.HandlerFunc(k.serveHTTP)) // on 127.0.0.1
	t.Cleanup(srv.Close)
	k.URL = srv.URL
	return k
}

// IssueToken returns a new service-account JWT for sa, shaped as a
// Kubernetes (legacy, unprojected) service-account token, which the
// stand-in will authenticate until it is invalidated.
func (k *KubernetesAPI) IssueToken(t testing.TB, sa ServiceAccount) string {
	t.Helper()
	jwt := k.sign(t, sa)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.valid[jwt] = sa
	return jwt
}

// Invalidate makes the stand-in refuse jwt from now on, as the API server
// refuses an expired projected token or one of a deleted service account.
func (k *KubernetesAPI) Invalidate(jwt string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.valid, jwt)
}

// Reviewed returns the JWTs the stand-in was asked to review, in order.
func (k *KubernetesAPI) Reviewed() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.reviewed)
}

func (k *KubernetesAPI) sign(t testing.TB, sa ServiceAccount) string {
	t.Helper()
	now := time.Now()
	header := map[string]any{"alg": "ES256", "typ": "JWT"}
	// The claims the plugin decodes: namespace, name and uid (matched
	// against the role's bindings and the TokenReview's answer), iss
	// (checked only when configured), exp and iat (checked when present).
	// jti keeps two tokens for the same account distinct.
	claims := map[string]any{
		"iss":                                    "kubernetes/serviceaccount",
		"sub":                                    sa.username(),
		"kubernetes.io/serviceaccount/namespace": sa.Namespace,
		"kubernetes.io/serviceaccount/service-account.name": sa.Name,
		"kubernetes.io/serviceaccount/service-account.uid":  sa.UID,
		"iat": now.Unix(),
		"exp": now.Add(time.Hour).Unix(),
		"jti": randomUID(),
	}
	h, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	enc := base64.RawURLEncoding
	signingInput := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	digest := sha256.Sum256([]byte(signingInput))
	r, s, err := ecdsa.Sign(rand.Reader, k.key, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	// JWS ES256 signatures are r and s as two 32-byte big-endian numbers,
	// not ASN.1.
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signingInput + "." + enc.EncodeToString(sig)
}

// tokenReview is the subset of authentication.k8s.io/v1 TokenReview that
// Vault sends and reads (k8s.io/api is not a dependency of this module).
type tokenReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Spec       tokenReviewSpec   `json:"spec"`
	Status     tokenReviewStatus `json:"status"`
}

type tokenReviewSpec struct {
	Token     string   `json:"token"`
	Audiences []string `json:"audiences,omitempty"`
}

type tokenReviewStatus struct {
	Authenticated bool      `json:"authenticated"`
	User          *userInfo `json:"user,omitempty"`
	Error         string    `json:"error,omitempty"`
}

type userInfo struct {
	Username string   `json:"username"`
	UID      string   `json:"uid"`
	Groups   []string `json:"groups"`
}

func (k *KubernetesAPI) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/apis/authentication.k8s.io/v1/tokenreviews" {
		writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+k.reviewerJWT {
		writeStatus(w, http.StatusUnauthorized, "Unauthorized", "Unauthorized")
		return
	}
	var review tokenReview
	if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
		writeStatus(w, http.StatusBadRequest, "BadRequest", "decode TokenReview: "+err.Error())
		return
	}
	k.mu.Lock()
	k.reviewed = append(k.reviewed, review.Spec.Token)
	sa, ok := k.valid[review.Spec.Token]
	k.mu.Unlock()

	review.APIVersion, review.Kind = "authentication.k8s.io/v1", "TokenReview"
	if ok {
		review.Status = tokenReviewStatus{Authenticated: true, User: &userInfo{
			Username: sa.username(),
			UID:      sa.UID,
			Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + sa.Namespace, "system:authenticated"},
		}}
	} else {
		// What the API server answers for an unknown or expired token: the
		// review itself succeeds, the token is not authenticated.
		review.Status = tokenReviewStatus{Error: "[invalid bearer token, token lookup failed]"}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_ = json.NewEncoder(w).Encode(review)
}

// writeStatus answers with a meta/v1 Status, the API server's error body,
// which the plugin parses into a Kubernetes error.
func writeStatus(w http.ResponseWriter, code int, reason, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": message, "reason": reason, "code": code,
	})
}

func randomUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	h := hex.EncodeToString(b)
	return strings.Join([]string{h[:8], h[8:12], h[12:16], h[16:20], h[20:]}, "-")
}

// Kubernetes enables Vault's kubernetes auth method, pointed at api, and a
// role "rotavault" bound to sa whose tokens carry only PolicyName and live
// tokenTTL, at most tokenMaxTTL ("" = Vault's defaults), as AppRole does. It
// returns the role's name.
func (s *Server) Kubernetes(t testing.TB, api *KubernetesAPI, sa ServiceAccount, tokenTTL, tokenMaxTTL string) (role string) {
	t.Helper()
	root := s.RootClient(t)
	if err := root.Sys().EnableAuthWithOptions("kubernetes", &vault.EnableAuthOptions{Type: "kubernetes"}); err != nil {
		t.Fatal(err)
	}
	// disable_local_ca_jwt: Vault does not run in a pod, so it must not look
	// for one's CA and token; the reviewer JWT is given instead.
	if _, err := root.Logical().Write("auth/kubernetes/config", map[string]any{
		"kubernetes_host":      api.URL,
		"disable_local_ca_jwt": true,
		"token_reviewer_jwt":   api.reviewerJWT,
	}); err != nil {
		t.Fatal(err)
	}
	role = "rotavault"
	writeRole(t, root, "auth/kubernetes/role/"+role, map[string]any{
		"bound_service_account_names":      sa.Name,
		"bound_service_account_namespaces": sa.Namespace,
	}, tokenTTL, tokenMaxTTL)
	return role
}
