package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "-trimpath", Value: "true"},
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "4a4a2789c1d2e3f4a5b6c7d8e9f00112233445566"},
		{Key: "vcs.time", Value: "2026-12-04T16:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}
	cases := []struct {
		name    string
		bi      *debug.BuildInfo
		ldflags string
		want    Info
	}{
		{"no build information", nil, "", Info{Version: Devel}},
		{"a checkout without VCS information", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, "",
			Info{Version: Devel, GoVersion: "go1.26.8"}},
		{"a checkout: the pseudo-version and the commit", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-20261204160000-4a4a2789c1d2+dirty"}, Settings: vcs}, "",
			Info{Version: "v0.0.0-20261204160000-4a4a2789c1d2+dirty", Revision: "4a4a2789c1d2e3f4a5b6c7d8e9f00112233445566", Time: "2026-12-04T16:00:00Z", Modified: true, GoVersion: "go1.26.8"}},
		{"go install at a tag", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.4.0"}}, "",
			Info{Version: "v1.4.0", GoVersion: "go1.26.8"}},
		{"a release build: ldflags win, the commit stays", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}, Settings: vcs}, " v1.5.0\n",
			Info{Version: "v1.5.0", Revision: "4a4a2789c1d2e3f4a5b6c7d8e9f00112233445566", Time: "2026-12-04T16:00:00Z", Modified: true, GoVersion: "go1.26.8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := fromBuildInfo(c.bi, c.ldflags); got != c.want {
				t.Fatalf("fromBuildInfo = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestString(t *testing.T) {
	i := Info{Version: "v1.5.0", Revision: "4a4a278", Time: "2026-12-04T16:00:00Z", Modified: true, GoVersion: "go1.26.8"}
	if got, want := i.String(), "rotavault v1.5.0 (revision 4a4a278, 2026-12-04T16:00:00Z, modified) go1.26.8"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
	if got, want := (Info{Version: Devel}).String(), "rotavault devel"; got != want {
		t.Fatalf("String = %q, want %q", got, want)
	}
}
