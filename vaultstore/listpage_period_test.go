package vaultstore

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/rotavault/rotavault/internal/fakeclock"
)

// A folder whose LIST takes long is listed again after ten times that, not
// after ListRefresh: paging through 100,000 keys must not keep Vault
// listing back to back. The LIST is a stand-in here, for its duration is
// what the test sets (a real LIST of Vault's takes what it takes).
func TestListPageRefreshPeriodGrowsWithTheListsDuration(t *testing.T) {
	clock := fakeclock.New(time.Now())
	lists := 0
	ls := &listings{refresh: 5 * time.Second, now: clock.Now, byPrefix: make(map[string]*listing)}
	ls.run = func(_ string, done func([]string, error)) bool {
		lists++
		go func() {
			clock.Add(2 * time.Second) // the LIST takes 2 s: period 20 s
			done([]string{"f/a", "f/b"}, nil)
		}()
		return true
	}
	page := func() {
		t.Helper()
		keys, _, err := ls.page(context.Background(), "f/", "", 10)
		if err != nil || !slices.Equal(keys, []string{"f/a", "f/b"}) {
			t.Fatalf("page: %q, %v", keys, err)
		}
	}
	page()
	clock.Add(7 * time.Second) // 9 s after the LIST began: past ListRefresh, within half the period
	page()
	if lists != 1 {
		t.Fatalf("%d LISTs 9 s after the first, want 1 (period 20 s)", lists)
	}
	clock.Add(12 * time.Second) // 21 s: past the period
	page()
	if lists != 2 {
		t.Fatalf("%d LISTs past the period, want 2", lists)
	}
}
