package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rotavault/rotavault/internal/version"
)

// addVersion gives root `rotavault version` and `rotavault --version`, both
// of which describe this binary: they need no server.
func addVersion(root *cobra.Command, a *app) {
	info := version.Get()
	root.Version = info.String()
	root.SetVersionTemplate("{{.Version}}\n")
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version, VCS revision and Go version",
		Long: `Print this binary's version: the release version stamped at build time
(-ldflags -X ` + version.LdflagsVar + `=VERSION), else the
Go module version the go command recorded, else "devel"; then the VCS
revision and commit time it was built from, when known, and the Go version.
The server reports the same in the rotavault_build_info metric.`,
		Args: args(cobra.NoArgs),
		RunE: runE(func(*cobra.Command, []string) error {
			if asJSON {
				b, err := json.Marshal(info)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(a.stdout, "%s\n", b)
				return err
			}
			_, err := fmt.Fprintln(a.stdout, info)
			return err
		}),
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object (version, revision, time, modified, go_version)")
	root.AddCommand(cmd)
}
