package boltstore

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// stalledWriter takes the first write, says so, then blocks every write
// until released: a backup stream whose reader stopped reading.
type stalledWriter struct {
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (w *stalledWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.started) })
	<-w.release
	return len(p), nil
}

// A backup whose reader is slow must not hold the store's writers: with a
// bbolt read transaction open for the whole stream, the first write that
// must grow the file waits for it and every later write queues behind that
// one (rotations included). The snapshot's transaction lasts only as long as
// the local copy.
func TestSlowBackupReaderDoesNotHoldWriters(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s.db"), testKey(t, 1), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ctx := context.Background()
	val := make([]byte, 200)
	for i := range 2000 {
		if _, err := s.Put(ctx, fmt.Sprintf("before/%d", i), val, 0); err != nil {
			t.Fatal(err)
		}
	}
	w := &stalledWriter{started: make(chan struct{}), release: make(chan struct{})}
	snapshotDone := make(chan error, 1)
	go func() {
		snapshotDone <- s.Snapshot(ctx, func(int64) (io.Writer, error) { return w, nil })
	}()
	<-w.started

	// Enough writes that the file must grow several times.
	putsDone := make(chan error, 1)
	go func() {
		for i := range 2000 {
			if _, err := s.Put(ctx, fmt.Sprintf("during/%d", i), val, 0); err != nil {
				putsDone <- err
				return
			}
		}
		putsDone <- nil
	}()
	select {
	case err := <-putsDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second): // a liveness bound, not a speed claim
		close(w.release)
		t.Fatal("writes stalled behind a backup whose reader is slow")
	}
	close(w.release)
	if err := <-snapshotDone; err != nil {
		t.Fatal(err)
	}
}
