package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/rotavault/rotavault/internal/version"
)

// buildInfo is the rotavault_build_info gauge: always 1, its labels say
// which build runs, so that dashboards can join on it and an alert can tell
// replicas running different versions apart.
func buildInfo(i version.Info) prometheus.Collector {
	revision := i.Revision
	if revision == "" {
		revision = "unknown"
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "build_info",
		Help:        "Always 1; the labels name the running build: version (release or module version, else devel), revision (VCS commit, or unknown), go_version.",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": revision, "go_version": i.GoVersion},
	})
	g.Set(1)
	return g
}
