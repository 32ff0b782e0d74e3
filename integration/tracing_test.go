package integration

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	brokerspans "github.com/rotavault/rotavault/broker/spans"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/server"
	"github.com/rotavault/rotavault/tracing"
)

// tracedEnv is a node traced into an in-memory exporter, spans exported as
// each ends.
func tracedEnv(t *testing.T) (*env, *tracetest.InMemoryExporter) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return newEnv(t, envOptions{tracing: tracing.New(tp)}), exp
}

// One rotation through the real gRPC server, traced: the gRPC call's span
// is the parent of rotavault.refresh, which is the parent of the claim (and
// its store write), the provider's token request and the result's store
// write. The call's log lines carry its trace id. No span carries a secret
// of the scenario in any spelling.
func TestTracingSpanTreeOfOneRotation(t *testing.T) {
	e, exp := tracedEnv(t)
	e.installSalesforce("acme")
	e.token("acme")
	awaitSpan(t, exp, getAccessTokenSpan) // the server span ends after the answer is sent
	e.expire()
	exp.Reset()
	resp := e.token("acme") // a rotation
	awaitSpan(t, exp, getAccessTokenSpan)

	spans := exp.GetSpans()
	byName := func(name string) []tracetest.SpanStub {
		var out []tracetest.SpanStub
		for _, s := range spans {
			if s.Name == name {
				out = append(out, s)
			}
		}
		return out
	}
	one := func(name string) tracetest.SpanStub {
		t.Helper()
		got := byName(name)
		if len(got) != 1 {
			t.Fatalf("%d spans %q, want 1; spans: %s", len(got), name, spanNames(spans))
		}
		return got[0]
	}
	rpc := one(getAccessTokenSpan)
	if rpc.SpanKind != trace.SpanKindServer || rpc.Parent.IsValid() {
		t.Fatalf("gRPC span: kind %v, parent %v; want a root server span", rpc.SpanKind, rpc.Parent)
	}
	refresh := one(brokerspans.Refresh)
	claim := one(brokerspans.Claim)
	childOf := func(what string, s, parent tracetest.SpanStub) {
		t.Helper()
		if s.Parent.SpanID() != parent.SpanContext.SpanID() || s.SpanContext.TraceID() != rpc.SpanContext.TraceID() {
			t.Errorf("%s (%s) is not a child of %s in the call's trace", what, s.Name, parent.Name)
		}
	}
	childOf("refresh", refresh, rpc)
	childOf("claim", claim, refresh)
	wantAttrs(t, refresh, map[string]string{brokerspans.AttrCredentialID: "acme", brokerspans.AttrOutcome: "ok", brokerspans.AttrGeneration: fmt.Sprint(resp.GetGeneration())})
	wantAttrs(t, claim, map[string]string{brokerspans.AttrCredentialID: "acme", brokerspans.AttrOutcome: "claimed"})

	var providerCalls, claimWrites, resultWrites int
	for _, s := range spans {
		switch {
		case s.SpanKind == trace.SpanKindClient && attr(s, "http.request.method") == "POST":
			childOf("provider request", s, refresh)
			if u := attr(s, "url.full"); !strings.HasPrefix(u, e.sim.URL()) {
				t.Errorf("provider span url.full %q, want the simulator's", u)
			}
			providerCalls++
		case s.Name == "store.put" && s.Parent.SpanID() == claim.SpanContext.SpanID():
			wantAttrs(t, s, map[string]string{tracing.AttrStoreKeyKind: "families", tracing.AttrStoreResult: "ok"})
			claimWrites++
		case s.Name == "store.put" && s.Parent.SpanID() == refresh.SpanContext.SpanID():
			wantAttrs(t, s, map[string]string{tracing.AttrStoreKeyKind: "families", tracing.AttrStoreResult: "ok"})
			resultWrites++
		}
	}
	if providerCalls != 1 || claimWrites != 1 || resultWrites != 1 {
		t.Errorf("under the refresh: %d provider requests, %d claim writes, %d result writes; want 1 each; spans: %s",
			providerCalls, claimWrites, resultWrites, spanNames(spans))
	}

	// The access log line of the call names its trace.
	traceID := rpc.SpanContext.TraceID().String()
	found := false
	for line := range strings.SplitSeq(e.logs.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		if rec[tracing.LogTraceID] == traceID && strings.Contains(line, "GetAccessToken") {
			found = true
		}
	}
	if !found {
		t.Errorf("no log line of the GetAccessToken call carries trace_id %s", traceID)
	}

	checkSpansHoldNoSecret(t, secretsOf(t, e.sim, filepath.Join(e.dataDir, "store.key"), nil), spans)
}

// The reauthentication by import (the refresh token in the request) and
// the OAuth callback (code and state in the query) are traced without
// their secrets either.
func TestTracingKeepsImportAndCallbackSecretsOut(t *testing.T) {
	e, exp := tracedEnv(t)
	e.installSalesforce("acme") // an import: the refresh token crosses the call
	// A callback with a made-up code and state, through the traced HTTP
	// endpoints: the handler refuses it; its span must not quote it.
	code, state := "cb-code-8d1f0a9c2e4b6d7f", "cb-state-3a5c7e9b1d2f4a6c8e"
	lis := e.serveHTTPEndpoints(t)
	status := httpGetStatus(t, "http://"+lis+server.CallbackPath+"?code="+code+"&state="+state)
	if status < 400 {
		t.Fatalf("callback with a made-up state answered %d", status)
	}
	awaitSpan(t, exp, "rotavault.v1.TokenVaultService/Reauthenticate")
	spans := exp.GetSpans()
	if !strings.Contains(spanNames(spans), "Reauthenticate") {
		t.Fatalf("no span of the Reauthenticate call; spans: %s", spanNames(spans))
	}
	poll.UntilSeen(t, awaitDeadline, "a server span of the callback", func() (bool, string) {
		spans = exp.GetSpans()
		for _, s := range spans {
			if s.SpanKind == trace.SpanKindServer && attr(s, "url.path") == server.CallbackPath {
				return true, ""
			}
		}
		return false, spanNames(spans)
	})
	secrets := append(secretsOf(t, e.sim, filepath.Join(e.dataDir, "store.key"), nil), code, state)
	checkSpansHoldNoSecret(t, secrets, spans)
}

// The secret check must find a secret planted in a span, in each spelling
// an encoder might give it, or its silence proves nothing.
func TestSpanSecretCheckFindsEverySpelling(t *testing.T) {
	const secret = "rt-5f0e1c/+=?&é-secret-value-01"
	spellings := map[string]string{
		"raw":            secret,
		"base64":         base64.StdEncoding.EncodeToString([]byte("id:" + secret)),
		"base64url":      base64.RawURLEncoding.EncodeToString([]byte("xx" + secret + "yy")),
		"hex":            hex.EncodeToString([]byte(secret)),
		"HEX":            strings.ToUpper(hex.EncodeToString([]byte(secret))),
		"query-escaped":  url.QueryEscape(secret),
		"path-escaped":   url.PathEscape(secret),
		"inside-a-value": "Bearer " + secret + "; more",
	}
	for name, spelled := range spellings {
		span := tracetest.SpanStub{Name: "x", Attributes: []attribute.KeyValue{attribute.String("k", spelled)}}
		rec := &recordingTB{TB: t}
		checkSpansHoldNoSecret(rec, []string{secret}, []tracetest.SpanStub{span})
		if !rec.failed {
			t.Errorf("a secret spelled %s in an attribute was not found", name)
		}
	}
}

const getAccessTokenSpan = "rotavault.v1.TokenVaultService/GetAccessToken"

// awaitSpan waits until a span named name has ended.
func awaitSpan(t *testing.T, exp *tracetest.InMemoryExporter, name string) {
	t.Helper()
	poll.Until(t, awaitDeadline, "span "+name, func() bool {
		for _, s := range exp.GetSpans() {
			if s.Name == name {
				return true
			}
		}
		return false
	})
}

// checkSpansHoldNoSecret fails t when a span's name, attributes, events,
// links, status or resource hold any secret in any of the spellings
// provider/redact.go considers: raw, percent-encoded (query and path),
// base64 standard and URL-safe (at every byte alignment, so inside the
// base64 of a longer text such as "id:secret"), and hex in either case.
func checkSpansHoldNoSecret(t testing.TB, secrets []string, spans []tracetest.SpanStub) {
	t.Helper()
	for _, s := range spans {
		text := spanText(s)
		for i, secret := range secrets {
			if len(secret) < 16 {
				continue // see checkNoSecrets
			}
			for _, spelled := range secretSpellings(secret) {
				if strings.Contains(text, spelled) {
					t.Errorf("leak: span %q holds secret #%d of %d", s.Name, i, len(secrets))
				}
			}
		}
	}
}

func spanText(s tracetest.SpanStub) string {
	var b strings.Builder
	kvs := func(attrs []attribute.KeyValue) {
		for _, a := range attrs {
			fmt.Fprintf(&b, " %s=%s", a.Key, a.Value.Emit())
		}
	}
	b.WriteString(s.Name)
	kvs(s.Attributes)
	for _, ev := range s.Events {
		b.WriteString(" event:" + ev.Name)
		kvs(ev.Attributes)
	}
	for _, l := range s.Links {
		kvs(l.Attributes)
	}
	b.WriteString(" status:" + s.Status.Description)
	if s.Resource != nil {
		kvs(s.Resource.Attributes())
	}
	return b.String()
}

func attr(s tracetest.SpanStub, key string) string {
	for _, a := range s.Attributes {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

func wantAttrs(t *testing.T, s tracetest.SpanStub, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got := attr(s, k); got != v {
			t.Errorf("span %s: %s = %q, want %q", s.Name, k, got, v)
		}
	}
}

func spanNames(spans []tracetest.SpanStub) string {
	names := make([]string, 0, len(spans))
	for _, s := range spans {
		names = append(names, fmt.Sprintf("%s(%s)", s.Name, s.SpanKind))
	}
	return strings.Join(names, ", ")
}

// serveHTTPEndpoints serves the node's HTTP endpoints (the OAuth callback)
// on its node, as rotavault serve does, until the node stops.
func (e *env) serveHTTPEndpoints(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.node.ServeHTTP("HTTP endpoints", server.NewHTTPMux(server.HTTPConfig{Callback: e.broker.Flows()}), lis)
	return lis.Addr().String()
}

func httpGetStatus(t *testing.T, u string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctxT(t), http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
