package metrics_test

import (
	"testing"

	"github.com/rotavault/rotavault/internal/version"
	"github.com/rotavault/rotavault/metrics"
)

// TestBuildInfo: every registry carries rotavault_build_info = 1 with the
// running build's version, revision and Go version.
func TestBuildInfo(t *testing.T) {
	families, err := metrics.New().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	want := version.Get()
	if want.Revision == "" {
		want.Revision = "unknown" // test binaries carry no VCS information
	}
	for _, f := range families {
		if f.GetName() != "rotavault_build_info" {
			continue
		}
		if len(f.GetMetric()) != 1 || f.GetMetric()[0].GetGauge().GetValue() != 1 {
			t.Fatalf("rotavault_build_info = %v, want one series of value 1", f.GetMetric())
		}
		got := map[string]string{}
		for _, l := range f.GetMetric()[0].GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if got["version"] != want.Version || got["revision"] != want.Revision || got["go_version"] != want.GoVersion || len(got) != 3 {
			t.Fatalf("labels %v, want version %q revision %q go_version %q", got, want.Version, want.Revision, want.GoVersion)
		}
		return
	}
	t.Fatal("no rotavault_build_info in the registry")
}
