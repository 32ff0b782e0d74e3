package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/boltstore"
	"github.com/rotavault/rotavault/broker"
	"github.com/rotavault/rotavault/broker/access"
	"github.com/rotavault/rotavault/broker/credspec"
	"github.com/rotavault/rotavault/broker/option"
	"github.com/rotavault/rotavault/internal/fakeclock"
	"github.com/rotavault/rotavault/internal/fositeserver"
	"github.com/rotavault/rotavault/internal/poll"
	"github.com/rotavault/rotavault/store"
	"github.com/rotavault/rotavault/store/storetest"
)

// memCredentials is how many idle credentials the memory benchmark loads:
// 10,000, or ROTAVAULT_BENCH_MEM_CREDENTIALS (100000 for the issue's
// figure). memAgingCredentials is how many of them it rotates ten times
// each for the aging ratio: all of them unless
// ROTAVAULT_BENCH_MEM_AGING_CREDENTIALS says fewer (a million rotations
// at 100,000 take a quarter of an hour on two cores).
func memCredentials(b *testing.B) (n, aging int) {
	n, aging = 10_000, -1
	for name, p := range map[string]*int{"ROTAVAULT_BENCH_MEM_CREDENTIALS": &n, "ROTAVAULT_BENCH_MEM_AGING_CREDENTIALS": &aging} {
		if s := os.Getenv(name); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 0 {
				b.Fatalf("%s=%q: want a number ≥ 0", name, s)
			}
			*p = v
		}
	}
	if aging < 0 || aging > n {
		aging = n
	}
	return n, aging
}

// memAgingRounds is how many rotations per credential the aging check
// makes; the first is the baseline the last is compared with.
const memAgingRounds = 10

// BenchmarkRSSPerIdleCredential measures the resident memory of a whole
// node as `serve` builds it (embedded store, audit trail, metrics, gRPC
// server, broker) over an empty store, then over n idle credentials with
// active families, after runtime.GC and debug.FreeOSMemory at default
// GOGC and once the store has released the pages of its file that reads
// mapped, as it does every minute (the benchmark calls it rather than
// wait); reported as bytes per credential: RSS, RSS before that release
// ("unreleased": the whole file the start read is resident), the
// anonymous part of RSS and heap in use. The credentials are
// seeded straight through store.Store as copies of one onboarded against
// ory/fosite, each with tokens of its own of the same lengths; "jwt-1KiB"
// gives them 1 KiB access tokens instead. Then the aging check: every
// credential rotated ten times (at a loopback token endpoint that rotates
// at once and keeps nothing), RSS after the tenth rotation ÷ RSS after the
// first (goal ≤ 1.05).
//
//	go test ./cmd/rotavault -run XXX -bench RSSPerIdleCredential -benchtime 1x
//
// ROTAVAULT_BENCH_MEM_CREDENTIALS=100000 for the issue's 100,000.
func BenchmarkRSSPerIdleCredential(b *testing.B) {
	b.Run("fosite-tokens", func(b *testing.B) { benchRSSPerCredential(b, 0) })
	b.Run("jwt-1KiB", func(b *testing.B) { benchRSSPerCredential(b, 1024) })
}

// memSample is the process's memory after a full collection with the
// freed pages given back.
type memSample struct {
	rss, anon, file, heap int64
	// live is the heap's live objects (HeapAlloc right after the
	// collection).
	live int64
	// runtime is the Go runtime's own memory besides the heap's spans:
	// stacks, span structures, GC metadata and the rest it holds.
	runtime int64
}

func sampleMemory(b testing.TB) memSample {
	runtime.GC()
	debug.FreeOSMemory()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Skipf("no /proc/self/status: %v", err)
	}
	defer func() { _ = f.Close() }()
	var s memSample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case "VmRSS":
			dst = &s.rss
		case "RssAnon":
			dst = &s.anon
		case "RssFile":
			dst = &s.file
		default:
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			b.Fatalf("/proc/self/status %s: %q", name, value)
		}
		*dst = kb << 10
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	s.heap, s.live = int64(ms.HeapInuse), int64(ms.HeapAlloc)
	s.runtime = int64(ms.Sys - ms.HeapSys + ms.StackInuse - ms.StackSys)
	return s
}

func (s memSample) String() string {
	return fmt.Sprintf("RSS %.1f MiB (anon %.1f, file %.1f), heap in use %.1f MiB (live %.1f), runtime %.1f MiB",
		float64(s.rss)/(1<<20), float64(s.anon)/(1<<20), float64(s.file)/(1<<20), float64(s.heap)/(1<<20), float64(s.live)/(1<<20), float64(s.runtime)/(1<<20))
}

// writeHeapProfile writes a heap profile to
// $ROTAVAULT_BENCH_MEM_PROFILE-<what>.pprof when that variable is set, for
// `go tool pprof -sample_index=inuse_space -top`.
func writeHeapProfile(b testing.TB, what string) {
	prefix := os.Getenv("ROTAVAULT_BENCH_MEM_PROFILE")
	if prefix == "" {
		return
	}
	f, err := os.Create(prefix + "-" + what + ".pprof")
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	runtime.GC()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		b.Fatal(err)
	}
}

func benchRSSPerCredential(b *testing.B, accessLen int) {
	if os.Getenv("ROTAVAULT_BENCH_MEM_PROFILE") != "" {
		// Every allocation sampled: an entry is far smaller than the default
		// 512 KiB between samples.
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	n, agingN := memCredentials(b)
	var perCred, perCredUnreleased, perCredAnon, perCredHeap, empty, loaded, aged float64
	for range b.N {
		r := runMemoryScenario(b, n, agingN, accessLen)
		perCred += float64(r.loaded.rss-r.empty.rss) / float64(n) / float64(b.N)
		perCredUnreleased += float64(r.loadedUnreleased.rss-r.emptyUnreleased.rss) / float64(n) / float64(b.N)
		perCredAnon += float64(r.loaded.anon-r.empty.anon) / float64(n) / float64(b.N)
		perCredHeap += float64(r.loaded.heap-r.empty.heap) / float64(n) / float64(b.N)
		empty += float64(r.empty.rss) / float64(b.N)
		loaded += float64(r.loaded.rss) / float64(b.N)
		if agingN > 0 {
			aged += float64(r.agedLast.rss) / float64(r.agedFirst.rss) / float64(b.N)
		}
	}
	b.ReportMetric(perCred, "B-rss/credential")
	b.ReportMetric(perCredUnreleased, "B-rss-unreleased/credential")
	b.ReportMetric(perCredAnon, "B-anon/credential")
	b.ReportMetric(perCredHeap, "B-heap/credential")
	b.ReportMetric(empty/(1<<20), "MiB-empty")
	b.ReportMetric(loaded/(1<<20), "MiB-loaded")
	if agingN > 0 {
		b.ReportMetric(aged, "rss-10-rotations/rss-1")
	}
	b.ReportMetric(0, "ns/op")
}

type memoryScenario struct {
	empty, loaded, agedFirst, agedLast memSample
	emptyUnreleased, loadedUnreleased  memSample
	// fileSize is the store file's size once seeded.
	fileSize int64
}

// runMemoryScenario runs one node over an empty store, onboards a template
// credential at ory/fosite on it, seeds n copies, runs a second node over
// them and rotates agingN of them memAgingRounds times.
func runMemoryScenario(b testing.TB, n, agingN, accessLen int) memoryScenario {
	ctx := context.Background()
	var out memoryScenario
	dir := b.TempDir()
	key, err := boltstore.GenerateKeyFile(filepath.Join(b.TempDir(), "store.key"))
	if err != nil {
		b.Fatal(err)
	}
	clock := fakeclock.New(time.Now())

	node := startMemoryNode(b, dir, key, clock)
	out.empty, out.emptyUnreleased = node.sample(b)
	b.Logf("empty: %s (unreleased: %s)", out.empty, out.emptyUnreleased)
	tmpl := onboardAtFosite(b, node.broker)
	node.stop(b)

	fast := newFastTokenEndpoint(tmpl, accessLen)
	srv := httptest.NewServer(fast)
	defer srv.Close()
	ids := seedMemoryCopies(b, filepath.Join(dir, storeFileName), key, tmpl, srv.URL+"/token", accessLen, n)

	fi, err := os.Stat(filepath.Join(dir, storeFileName))
	if err != nil {
		b.Fatal(err)
	}
	out.fileSize = fi.Size()
	node = startMemoryNode(b, dir, key, clock)
	defer node.stop(b)
	// Idle, steady: loaded, and each placed by a scheduler tick (loading
	// wakes it; the seeded tokens all have a refresh time ahead).
	poll.Until(b, 10*time.Minute, "every credential loaded and scheduled", func() bool {
		s := node.broker.Stats()
		return s.Loading.Listed && s.Loading.Loaded == s.Loading.ToLoad && s.Scheduled >= s.Loading.ToLoad
	})
	out.loaded, out.loadedUnreleased = node.sample(b)
	b.Logf("%d idle credentials: %s (unreleased: %s)", n, out.loaded, out.loadedUnreleased)
	writeHeapProfile(b, "loaded")
	if agingN == 0 {
		return out
	}
	for round := 1; round <= memAgingRounds; round++ {
		// Past every token's lifetime: each GetAccessToken rotates.
		clock.Add(tmpl.lifetime + time.Hour)
		start := time.Now()
		rotateAll(b, ctx, node.broker, ids[:agingN], uint64(round)+tmpl.generation)
		switch round {
		case 1:
			out.agedFirst, _ = node.sample(b)
			b.Logf("after 1 rotation of %d credentials (%s): %s", agingN, time.Since(start).Round(time.Millisecond), out.agedFirst)
			writeHeapProfile(b, "rotated-once")
		case memAgingRounds:
			out.agedLast, _ = node.sample(b)
			b.Logf("after %d rotations of %d credentials: %s", round, agingN, out.agedLast)
			writeHeapProfile(b, "aged")
		}
	}
	if got, want := fast.refreshes.Load(), int64(memAgingRounds*agingN); got != want {
		b.Fatalf("%d refreshes at the token endpoint, want %d", got, want)
	}
	return out
}

// memoryNode is a server run as `serve` runs it, logging nowhere (a real
// server's log leaves the process).
type memoryNode struct {
	broker *broker.Broker
	store  *boltstore.Store
	cancel context.CancelFunc
	done   chan error
}

func startMemoryNode(b testing.TB, dir string, key boltstore.Key, clock *fakeclock.Clock) *memoryNode {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	n := &memoryNode{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan *broker.Broker, 1)
	cfg := serverConfig{
		Addr: "127.0.0.1:0", DataDir: dir, Key: key,
		Logger: slog.New(slog.DiscardHandler),
		// A tick every 20 ms instead of 5 s: the steady state sooner.
		BrokerOptions: []option.Option{option.WithClock(clock.Now), option.WithSchedulerInterval(20 * time.Millisecond)},
		wrapStore: func(st store.Store) store.Store {
			n.store, _ = st.(*boltstore.Store)
			return st
		},
		Ready: func(_ context.Context, s *runningServer) error {
			ready <- s.Broker
			return nil
		},
	}
	go func() { n.done <- runServer(ctx, cfg) }()
	select {
	case n.broker = <-ready:
	case err := <-n.done:
		cancel()
		b.Fatalf("server did not start: %v", err)
	case <-time.After(awaitDeadline):
		cancel()
		b.Fatal("server did not become ready")
	}
	if n.store == nil {
		n.stop(b)
		b.Fatal("the node's store is not the embedded store")
	}
	return n
}

// sample is the node's memory once its store has released the pages of
// its file it mapped, as it does every minute (boltstore's
// ReleaseMappedPages), and unreleased, what it was before.
func (n *memoryNode) sample(b testing.TB) (released, unreleased memSample) {
	unreleased = sampleMemory(b)
	if err := n.store.ReleaseMappedPages(); err != nil {
		b.Fatal(err)
	}
	return sampleMemory(b), unreleased
}

func (n *memoryNode) stop(b testing.TB) { stopServer(b, n.cancel, &n.done) }

// template is the onboarded credential the copies are made of.
type template struct {
	id         string
	cred, fam  store.Record
	lifetime   time.Duration
	generation uint64
	scope      string
	refreshLen int
	accessLen  int
}

// onboardAtFosite creates a credential for ory/fosite and imports a
// refresh token it issued, proven by one refresh: its family holds
// fosite's tokens.
func onboardAtFosite(b testing.TB, br *broker.Broker) template {
	ctx := context.Background()
	fs, err := fositeserver.Start(fositeserver.Config{AccessTokenLifespan: 2 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = fs.Close() }()
	const redirect, clientID, secret = "http://127.0.0.1:1/callback", "rotavault", "fosite-client-secret"
	fs.AddClient(clientID, secret, []string{redirect})
	rt, err := fs.IssueRefreshToken(ctx, clientID, secret, redirect, nil)
	if err != nil {
		b.Fatal(err)
	}
	t := template{id: "template", lifetime: 2 * time.Hour}
	spec := credspec.Spec{ProviderKind: credspec.ProviderOAuth2, TokenURL: fs.TokenURL(), ClientID: clientID, ClientSecret: secret,
		Scopes: []string{"offline_access", "openid"}, AccessTokenLife: t.lifetime}
	if _, err := br.Credentials().Create(ctx, t.id, spec); err != nil {
		b.Fatal(err)
	}
	act, err := br.ImportRefreshToken(ctx, t.id, rt)
	if err != nil || act.Unproven {
		b.Fatalf("import: %+v, %v", act, err)
	}
	tok, err := br.GetAccessToken(ctx, access.Request{CredentialID: t.id})
	if err != nil {
		b.Fatal(err)
	}
	t.generation, t.scope, t.accessLen, t.refreshLen = tok.Generation, strings.Join(tok.Scopes, " "), len(tok.Token), len(rt)
	return t
}

// readTemplate reads the template's two records from the store.
func (t *template) read(b testing.TB, st store.Store) (cred, fam map[string]any) {
	ctx := context.Background()
	rec, err := st.Get(ctx, "credentials/"+t.id)
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(rec.Value, &cred); err != nil {
		b.Fatal(err)
	}
	famRec, err := st.Get(ctx, "families/"+t.id+"/"+cred["incarnation"].(string))
	if err != nil {
		b.Fatal(err)
	}
	if err := json.Unmarshal(famRec.Value, &fam); err != nil {
		b.Fatal(err)
	}
	if got := len(fam["refresh_token"].(string)); got != t.refreshLen {
		b.Fatalf("stored refresh token of %d bytes, fosite issued %d", got, t.refreshLen)
	}
	return cred, fam
}

// seedMemoryCopies writes n copies of the template (ids mem-0000000…)
// straight into the embedded store at path, each with an id, incarnation,
// family id and tokens of its own (the template's lengths, or accessLen
// for the access token), its token URL tokenURL.
func seedMemoryCopies(b testing.TB, path string, key boltstore.Key, t template, tokenURL string, accessLen, n int) []string {
	st, err := boltstore.Open(path, key, boltstore.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	cred, fam := t.read(b, st)
	if accessLen == 0 {
		accessLen = t.accessLen
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("mem-%07d", i)
	}
	start := time.Now()
	err = storetest.Seed(context.Background(), st, n, func(i int) ([]store.Record, error) {
		c, f := maps.Clone(cred), maps.Clone(fam)
		spec := maps.Clone(cred["spec"].(map[string]any))
		spec["token_url"] = tokenURL
		inc := randomString(16)
		c["id"], c["incarnation"], c["spec"] = ids[i], inc, spec
		acc := maps.Clone(fam["access"].(map[string]any))
		token := randomString(accessLen)
		acc["token"], acc["fingerprint"] = token, access.Fingerprint(token)
		f["access"], f["refresh_token"], f["family_id"] = acc, randomString(t.refreshLen), randomString(len(fam["family_id"].(string)))
		rawCred, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		rawFam, err := json.Marshal(f)
		return []store.Record{{Key: "credentials/" + ids[i], Value: rawCred}, {Key: "families/" + ids[i] + "/" + inc, Value: rawFam}}, err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("seeded %d credentials in %s", n, time.Since(start).Round(time.Millisecond))
	return ids
}

// randomString is n random characters of the base64url alphabet, the
// shape of fosite's opaque tokens.
func randomString(n int) string {
	raw := make([]byte, (n*3+3)/4)
	_, _ = rand.Read(raw)
	return base64.RawURLEncoding.EncodeToString(raw)[:n]
}

// fastTokenEndpoint rotates every refresh token it is shown, at once and
// keeping nothing, answering tokens of the template's lengths: rotations
// at the pace of the broker and the store, with nothing in the process
// growing on the provider's side.
type fastTokenEndpoint struct {
	accessLen, refreshLen int
	scope                 string
	lifetime              time.Duration
	refreshes             atomic.Int64
	buffers               sync.Pool // of *[]byte
}

func newFastTokenEndpoint(t template, accessLen int) *fastTokenEndpoint {
	if accessLen == 0 {
		accessLen = t.accessLen
	}
	return &fastTokenEndpoint{accessLen: accessLen, refreshLen: t.refreshLen, scope: t.scope, lifetime: t.lifetime,
		buffers: sync.Pool{New: func() any { return new([]byte) }}}
}

func (f *fastTokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "refresh_token" || r.PostForm.Get("refresh_token") == "" {
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"invalid_request"}`))
		return
	}
	f.refreshes.Add(1)
	w.Header().Set("Content-Type", "application/json")
	// Written piece by piece from one buffer: this endpoint shares the
	// node's heap, where a real provider's garbage would not be.
	buf := f.buffers.Get().(*[]byte)
	defer f.buffers.Put(buf)
	out := append((*buf)[:0], `{"token_type":"bearer","access_token":"`...)
	out = appendRandom(out, f.accessLen)
	out = append(out, `","refresh_token":"`...)
	out = appendRandom(out, f.refreshLen)
	out = append(out, `","scope":"`...)
	out = append(out, f.scope...)
	out = append(out, `","expires_in":`...)
	out = strconv.AppendInt(out, int64(f.lifetime.Seconds()), 10)
	out = append(out, "}\n"...)
	*buf = out
	_, _ = w.Write(out)
}

// appendRandom appends n random characters of the base64url alphabet.
func appendRandom(dst []byte, n int) []byte {
	var raw [48]byte
	for n > 0 {
		_, _ = rand.Read(raw[:])
		chunk := min(n, base64.RawURLEncoding.EncodedLen(len(raw)))
		dst = base64.RawURLEncoding.AppendEncode(dst, raw[:])[:len(dst)+chunk]
		n -= chunk
	}
	return dst
}

// rotateAll asks for a token on every credential with 32 callers; each
// must come back at generation want.
func rotateAll(b testing.TB, ctx context.Context, br *broker.Broker, ids []string, want uint64) {
	work := make(chan string)
	var wg sync.WaitGroup
	var failed atomic.Pointer[error]
	for range 32 {
		wg.Go(func() {
			for id := range work {
				tok, err := br.GetAccessToken(ctx, access.Request{CredentialID: id})
				if err == nil && tok.Generation != want {
					err = fmt.Errorf("%s at generation %d, want %d", id, tok.Generation, want)
				}
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(*err)
	}
}
