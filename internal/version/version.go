// Package version says which Rotavault a binary is: the version a release
// build stamps with the linker, else what the Go toolchain recorded (the
// module version and the VCS revision it was built from).
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// override is set by release builds, and by the Dockerfile:
//
//	go build -ldflags "-X github.com/rotavault/rotavault/internal/version.override=v1.2.3" ./cmd/rotavault
//
// It is the package's only variable because the linker can set nothing
// else; nothing in the program writes it.
var override string

// LdflagsVar is the name -ldflags -X sets, for build scripts and tests.
const LdflagsVar = "github.com/rotavault/rotavault/internal/version.override"

// Devel is the version of a build that has neither an ldflags version nor a
// module version (go build in a checkout without VCS information).
const Devel = "devel"

// Info describes a build. The zero value describes nothing known.
type Info struct {
	// Version is the release version (-ldflags -X), else the main module's
	// version as the go command recorded it (a tag, or a pseudo-version
	// derived from the commit), else Devel.
	Version string `json:"version"`
	// Revision is the VCS commit the binary was built from, "" when the
	// build had no VCS information (-buildvcs=false, or no .git).
	Revision string `json:"revision,omitempty"`
	// Time is the commit's time (RFC 3339), "" when unknown.
	Time string `json:"time,omitempty"`
	// Modified reports uncommitted changes in the work tree at build time.
	Modified bool `json:"modified,omitempty"`
	// GoVersion is the Go toolchain that built the binary.
	GoVersion string `json:"go_version"`
}

// Get returns this binary's Info.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, override)
}

// fromBuildInfo derives Info from what the go command recorded (nil: no
// information) and the ldflags version ("" when not set).
func fromBuildInfo(bi *debug.BuildInfo, ldflags string) Info {
	var info Info
	if bi != nil {
		info.GoVersion = bi.GoVersion
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			info.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if v := strings.TrimSpace(ldflags); v != "" {
		info.Version = v
	}
	if info.Version == "" {
		info.Version = Devel
	}
	return info
}

// String is the one-line form `rotavault version` prints:
// "rotavault v1.2.3 (revision 0123abcd…, modified) go1.26.8".
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rotavault %s", i.Version)
	var details []string
	if i.Revision != "" {
		details = append(details, "revision "+i.Revision)
	}
	if i.Time != "" {
		details = append(details, i.Time)
	}
	if i.Modified {
		details = append(details, "modified")
	}
	if len(details) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(details, ", "))
	}
	if i.GoVersion != "" {
		fmt.Fprintf(&b, " %s", i.GoVersion)
	}
	return b.String()
}
