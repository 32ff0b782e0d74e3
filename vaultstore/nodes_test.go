package vaultstore

import (
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"
	"testing"
)

// classify decides whether a request may go to another node: only when the
// node cannot have processed it. Everything else is the caller's answer,
// and a lost connection after sending is an unknown outcome.
func TestClassifyNodeAnswers(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	for _, tt := range []struct {
		name   string
		status int
		err    error
		want   verdict
	}{
		{"connection refused: the node is down", 0, refused, notProcessed},
		{"wrapped refusal", 0, errors.Join(errors.New("Put"), refused), notProcessed},
		{"503: sealed, or a standby without an active node", http.StatusServiceUnavailable, nil, notProcessed},
		{"reset after sending: maybe applied", 0, reset, unknownOutcome},
		{"EOF after sending: maybe applied", 0, io.ErrUnexpectedEOF, unknownOutcome},
		{"200", http.StatusOK, nil, answered},
		{"400 check-and-set mismatch is an answer", http.StatusBadRequest, nil, answered},
		{"500 is the active node's answer", http.StatusInternalServerError, nil, answered},
		{"307: a standby could not forward", http.StatusTemporaryRedirect, nil, redirected},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var resp *http.Response
			if tt.err == nil {
				resp = &http.Response{StatusCode: tt.status}
			}
			if got, _ := classify(resp, tt.err); got != tt.want {
				t.Errorf("classify = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNodeAddressesAreChecked(t *testing.T) {
	for _, addrs := range [][]string{
		nil,
		{"127.0.0.1:8200"},
		{"ftp://127.0.0.1:8200"},
		{"http://127.0.0.1:8200/v1"},
		{"http://127.0.0.1:8200", "http://127.0.0.1:8200/"},
	} {
		if _, err := newNodeTransport(http.DefaultTransport, addrs, nil); err == nil {
			t.Errorf("%q accepted", addrs)
		}
	}
	nt, err := newNodeTransport(http.DefaultTransport, []string{"http://127.0.0.1:8200", " https://vault-1:8200 "}, nil)
	if err != nil || len(nt.nodes) != 2 || nt.nodes[1].String() != "https://vault-1:8200" {
		t.Fatalf("nodes %v, %v", nt, err)
	}
}
