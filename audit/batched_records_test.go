package audit

import (
	"bytes"
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/poll"
)

// holdFirstWrite makes l's first batch wait for release before it writes
// (failing with fail, when set) and counts the batches written.
func holdFirstWrite(l *FileLog, fail error) (release func(), writes *atomic.Int64) {
	gate := make(chan struct{})
	writes = &atomic.Int64{}
	l.beforeWrite = func() error {
		if writes.Add(1) == 1 {
			<-gate
			return fail
		}
		return nil
	}
	return func() { close(gate) }, writes
}

// recordConcurrently starts n Records and returns their errors once all
// returned; it releases the held write once all n are chained (queued behind the
// first batch's write).
func recordConcurrently(t *testing.T, l *FileLog, n int, release func()) []error {
	t.Helper()
	l.mu.Lock()
	start := l.tailSeq
	l.mu.Unlock()
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = l.Record(context.Background(), testEvent(i)) })
	}
	poll.Until(t, 10*time.Second, "every record chained", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.tailSeq == start+uint64(n)
	})
	release()
	wg.Wait()
	return errs
}

// Every rotation writes an audit record, and a record is durable when
// Record returns. Records made while the file is being synced must share
// the next write and fsync instead of queueing one fsync each.
func TestConcurrentRecordsShareOneWrite(t *testing.T) {
	cfg := newConfig(t)
	l := openLog(t, cfg)
	release, writes := holdFirstWrite(l, nil)
	for i, err := range recordConcurrently(t, l, 64, release) {
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	// The first record's batch, then one batch of the other 63.
	if got := writes.Load(); got != 2 {
		t.Fatalf("64 concurrent records took %d writes, want 2", got)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 64 {
		t.Fatalf("the trail holds %d records, want 64", rep.Records)
	}
}

// A failed write loses nothing that was reported durable: its records and
// those chained behind them fail, the file is cut back, and the next record
// continues the chain from the last durable one.
func TestFailedWriteFailsItsBatchAndThoseChainedOnIt(t *testing.T) {
	cfg := newConfig(t)
	l := openLog(t, cfg)
	if err := l.Record(context.Background(), testEvent(100)); err != nil {
		t.Fatal(err)
	}
	diskFull := errors.New("disk full (test)")
	release, _ := holdFirstWrite(l, diskFull)
	errs := recordConcurrently(t, l, 16, release)
	for i, err := range errs {
		if !errors.Is(err, diskFull) {
			t.Fatalf("record %d: %v, want the failed write's error", i, err)
		}
	}
	if err := l.Record(context.Background(), testEvent(200)); err != nil {
		t.Fatalf("after the failed write: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), cfg)
	if err != nil {
		t.Fatalf("the chain broke: %v", err)
	}
	if rep.Records != 2 {
		t.Fatalf("the trail holds %d records, want the 2 reported durable", rep.Records)
	}
}

// An import's install is audited while its proving refresh runs: Start
// must place the record in the chain at once (before the refresh's own
// record) and return without waiting for the disk; wait then reports the
// record durable.
func TestStartedRecordKeepsItsPlaceWithoutWaitingForTheDisk(t *testing.T) {
	cfg := newConfig(t)
	l := openLog(t, cfg)
	release, _ := holdFirstWrite(l, nil)
	started := make(chan func() error, 1)
	go func() { started <- l.Start(context.Background(), testEvent(1)) }()
	var wait func() error
	select {
	case wait = <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("Start waited for the held write")
	}
	later := make(chan error, 1)
	go func() { later <- l.Record(context.Background(), testEvent(2)) }()
	poll.Until(t, 10*time.Second, "the later record chained", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.tailSeq == 2
	})
	release()
	if err := wait(); err != nil {
		t.Fatalf("started record: %v", err)
	}
	if err := <-later; err != nil {
		t.Fatalf("later record: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	first, second := bytes.Index(raw, []byte(`"cred-1"`)), bytes.Index(raw, []byte(`"cred-2"`))
	if first < 0 || second < first {
		t.Fatalf("trail order: started record at %d, later one at %d; want the started one first", first, second)
	}
	if _, err := Verify(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
}
