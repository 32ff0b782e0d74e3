// Package deploytest tests the deployment artefacts offline, where no
// container daemon, cluster or init system runs: the Dockerfile (parsed with
// buildkit's parser, its build stage run as written, its final stage's
// command run with only the data directory writable), the Helm chart
// (rendered with Helm's engine, decoded strictly into Kubernetes types) and
// the systemd unit (systemd-analyze, installed by scripts/deploy-deps).
package deploytest

import (
	"os"
	"path/filepath"
	"testing"
)

// repoRoot is the repository, seen from this package's directory (where go
// test runs it).
const repoRoot = "../.."

func readRepoFile(t *testing.T, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
