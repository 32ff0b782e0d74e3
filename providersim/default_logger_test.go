package providersim

import (
	"context"
	"log/slog"
	"testing"
)

// A simulator started without a Logger builds none of the records it would
// throw away: a benchmark's refreshes cost it no formatting.
func TestWithoutLoggerNoRecordIsBuilt(t *testing.T) {
	s, err := Start(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, level := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if s.log.Enabled(context.Background(), level) {
			t.Fatalf("the default logger takes %v records, to discard them", level)
		}
	}
}
