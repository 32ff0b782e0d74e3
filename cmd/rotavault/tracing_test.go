package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/internal/otlptest"
)

// An OTEL_TRACES_EXPORTER this build lacks stops serve at start with a
// usage error naming the variable, before the store is opened.
func TestServeRefusesAnUnsupportedTraceExporter(t *testing.T) {
	dir := t.TempDir()
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	r := c.runEnv(map[string]string{"OTEL_TRACES_EXPORTER": "console"}, "",
		"serve", "--addr", "127.0.0.1:0", "--data-dir", dir, "--store-key-file", keyFile).expect(t, exitUsage)
	if !strings.Contains(r.stderr, "OTEL_TRACES_EXPORTER") || !strings.Contains(r.stderr, "otlp") {
		t.Errorf("the refusal does not name the variable and what it accepts:\n%s", r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, storeFileName)); err == nil {
		t.Error("the store was opened before the setting was refused")
	}
}

// serve given an OTLP endpoint exports the span of each call to it (the
// last ones flushed at shutdown), and the call's log line names the trace
// (at debug: a quick successful list is logged there only).
func TestServeExportsSpansToTheOTLPEndpoint(t *testing.T) {
	rec := otlptest.Start(t, "http/protobuf")
	keyFile, _ := newKeyFile(t, t.TempDir(), "store.key")
	c := newCLI(t, nil)
	srv := c.start(map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": rec.Endpoint},
		"serve", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir(), "--store-key-file", keyFile, "--log-level", "debug")
	addr := servingAddr(t, srv.stderr.WaitFor(t, `"rotavault serving"`, awaitDeadline))
	c.run("", "credentials", "list", "--server", addr).expect(t, exitOK)
	if code := srv.stop(t); code != exitOK {
		t.Fatalf("serve exited %d:\n%s", code, srv.stderr.String())
	}
	const span = "rotavault.v1.CredentialAdminService/ListCredentials"
	if spans := rec.Spans(); !slices.Contains(spans, span) {
		t.Fatalf("the receiver got spans %q, want %s", spans, span)
	}
	traced := false
	for line := range strings.SplitSeq(srv.stderr.String(), "\n") {
		var l struct {
			Method  string `json:"grpc.method"`
			TraceID string `json:"trace_id"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Method == "ListCredentials" && len(l.TraceID) == 32 {
			traced = true
		}
	}
	if !traced {
		t.Errorf("no log line of the ListCredentials call carries a trace_id:\n%s", srv.stderr.String())
	}
}
