package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// faultProxy stands between Rotavault and a provider's endpoints (ory/fosite
// or the simulator: every provider of the run sits behind one, so that
// their faults behave alike) and fails the way a provider's edge does:
// 5xx answers for requests the provider never saw; latency on the way back,
// after the provider processed the request (its family rotated), so that
// a replica killed or paused while it waits never gets an answer the
// provider committed to; and lost answers — the provider processes the
// refresh and the connection is closed before the answer. It records every
// refresh answer (the fault test decides from them which rotations a
// killed or paused replica never stored) and keeps every token that
// crossed it, for the leak check: fosite has no list of what it issued.
//
// Safe for concurrent use; Close stops it.
type faultProxy struct {
	upstream *url.URL
	srv      *http.Server
	url      string
	client   *http.Client

	mu       sync.Mutex
	latency  time.Duration
	fail5xx  int // the next requests answered 503 without reaching fosite
	loseNext int // the next rotations processed by the provider, then dropped
	lost     int // answers dropped so far
	secrets  []string
	answers  []refreshAnswer
}

// refreshAnswer is the provider's answer to one refresh_token grant, as
// the proxy passed it on (or did not).
type refreshAnswer struct {
	Seq  int       // 1, 2, … in the order the provider answered
	Port int       // the caller's source port: which replica asked
	At   time.Time // when the provider answered (before any latency)
	// Delivered is when the answer was written to the caller (or dropped):
	// after the injected latency.
	Delivered time.Time
	// Rotated: the provider issued a new refresh token. Refused: it
	// answered invalid_grant (a superseded or revoked token presented).
	Rotated, Refused bool
	// CallerGone: the caller's connection had closed by the time the
	// answer was to be written: the rotation reached no one. Dropped: a
	// lost-answer fault closed it (counted by Lost).
	CallerGone, Dropped bool
}

func startFaultProxy(upstream string) (*faultProxy, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &faultProxy{upstream: u, url: "http://" + ln.Addr().String(),
		client: &http.Client{Transport: &http.Transport{Proxy: nil}}}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(ln) }()
	return p, nil
}

func (p *faultProxy) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.srv.Shutdown(ctx); err != nil {
		return p.srv.Close()
	}
	return nil
}

// URL is the proxy's base URL: fosite's paths are served under it.
func (p *faultProxy) URL() string { return p.url }

func (p *faultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// Fail makes the next n requests answer 503 unprocessed.
func (p *faultProxy) Fail(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail5xx = n
}

// LoseNext makes the next n rotations be processed by the provider and
// their answers dropped. Only rotations: a dropped answer to another
// request (discovery, introspection, a refused refresh) loses nothing, and
// the run would wait for a LOST_ROTATION that cannot come.
func (p *faultProxy) LoseNext(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.loseNext = n
}

// failLeft is how many 503 answers are still to come.
func (p *faultProxy) failLeft() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fail5xx
}

// Lost is how many answers were dropped so far.
func (p *faultProxy) Lost() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lost
}

// Answers are the refresh answers after seq, in order.
func (p *faultProxy) Answers(after int) []refreshAnswer {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.answers[min(after, len(p.answers)):])
}

func (p *faultProxy) recordAnswer(a refreshAnswer) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a.Seq = len(p.answers) + 1
	p.answers = append(p.answers, a)
}

// Secrets are the tokens and client credentials seen in requests and
// answers.
func (p *faultProxy) Secrets() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.secrets)
}

// take decides the fate of one arriving request.
func (p *faultProxy) take() (latency time.Duration, fail bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail5xx > 0 {
		p.fail5xx--
		return p.latency, true
	}
	return p.latency, false
}

// loseRotation decides whether the answer to a rotation is dropped.
func (p *faultProxy) loseRotation() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.loseNext > 0 {
		p.loseNext--
		p.lost++
		return true
	}
	return false
}

func (p *faultProxy) remember(values ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, v := range values {
		if v != "" {
			p.secrets = append(p.secrets, v)
		}
	}
}

func (p *faultProxy) serve(w http.ResponseWriter, r *http.Request) {
	// Reading the whole body first also makes net/http watch the
	// connection: r.Context() ends when the caller goes away.
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	form, _ := url.ParseQuery(string(body))
	p.remember(form.Get("refresh_token"), form.Get("token"), form.Get("client_secret"), form.Get("code"), form.Get("code_verifier"))
	refresh := form.Get("grant_type") == "refresh_token"
	latency, fail := p.take()
	if fail {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	target := *p.upstream
	target.Path, target.RawQuery = r.URL.Path, r.URL.RawQuery
	// Not the caller's context: the provider processes what reached it,
	// whatever the caller does meanwhile.
	req, err := http.NewRequestWithContext(context.WithoutCancel(r.Context()), r.Method, target.String(), bytes.NewReader(body))
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	req.Header = r.Header.Clone()
	resp, err := p.client.Do(req)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	answer, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	answeredAt := time.Now()
	var tokens struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		Error        string `json:"error"`
	}
	if json.Unmarshal(answer, &tokens) == nil {
		p.remember(tokens.AccessToken, tokens.RefreshToken)
	}
	rotated := refresh && resp.StatusCode == http.StatusOK && tokens.RefreshToken != ""
	lose := rotated && p.loseRotation()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done(): // the caller is gone: the answer reaches no one
			t.Stop()
		}
	}
	if refresh {
		p.recordAnswer(refreshAnswer{Port: sourcePort(r.RemoteAddr), At: answeredAt, Delivered: time.Now(),
			Rotated:    rotated,
			Refused:    tokens.Error == "invalid_grant",
			CallerGone: !lose && r.Context().Err() != nil, Dropped: lose})
	}
	if lose {
		dropConnectionOf(w)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(answer)
}

// sourcePort is the port of a "host:port" address, 0 if it has none.
func sourcePort(addr string) int {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(port)
	return n
}

// dropConnectionOf closes the caller's connection without an answer.
func dropConnectionOf(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
