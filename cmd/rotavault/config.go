package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

const (
	// configFlag names serve's configuration file.
	configFlag = "config"
	// maxConfigSize bounds the configuration file: a full one is a few KiB.
	maxConfigSize = 1 << 20
)

// configKey spells a flag's name as a configuration key:
// refresh-claim-ttl → refresh_claim_ttl.
func configKey(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// commandLineOnlyAnnotation marks a flag that is a one-off decision, not a
// setting: it has no configuration key and no environment variable, so it
// cannot stay in force after the occasion that called for it.
const commandLineOnlyAnnotation = "rotavault_command_line_only"

// commandLineOnly makes flag of fs a command-line-only flag.
func commandLineOnly(fs *pflag.FlagSet, flag string) {
	if err := fs.SetAnnotation(flag, commandLineOnlyAnnotation, []string{"true"}); err != nil {
		panic(err) // a flag registered in this package is misspelt
	}
	bindEnv(fs, flag, "")
}

// configFlags lists the settings a configuration file may hold: every flag
// of cmd except --config itself, help, deprecated names and command-line-only
// flags. The schema of the file is therefore the flags of serve, one key per
// flag.
func configFlags(cmd *cobra.Command) map[string]*pflag.Flag {
	out := make(map[string]*pflag.Flag)
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == configFlag || f.Name == "help" || f.Deprecated != "" || f.Annotations[commandLineOnlyAnnotation] != nil {
			return
		}
		out[configKey(f.Name)] = f
	})
	return out
}

// configSetting is one key of the configuration file with its values (one,
// or several for a repeatable flag) and where it is.
type configSetting struct {
	key    string
	line   int
	values []string
	list   bool
}

// applyConfigFile gives each flag of cmd that neither the command line nor
// the environment set the value the --config file gives it. A key that is
// not a setting, a value of the wrong type or shape, or a key given twice
// is refused, naming the key and its line (the command then does not run).
func (a *app) applyConfigFile(cmd *cobra.Command) error {
	cf := cmd.Flags().Lookup(configFlag)
	if cf == nil || cf.Value.String() == "" {
		return nil
	}
	path := cf.Value.String()
	settings, err := readConfigFile(path)
	if err != nil {
		return err
	}
	known := configFlags(cmd)
	type assignment struct {
		f *pflag.Flag
		s configSetting
	}
	// Every key is checked before any value is set.
	var todo []assignment
	for _, s := range settings {
		f, ok := known[s.key]
		if !ok {
			return usageErrorf("%s:%d: unknown setting %q (the settings are serve's flags, - written _; see `rotavault serve --help`)", path, s.line, s.key)
		}
		if s.list && !isListFlag(f) {
			return usageErrorf("%s:%d: %s takes one value, not a list", path, s.line, s.key)
		}
		todo = append(todo, assignment{f, s})
	}
	for _, t := range todo {
		if t.f.Changed {
			continue // the command line or the environment wins
		}
		for _, v := range t.s.values {
			if err := cmd.Flags().Set(t.f.Name, v); err != nil {
				return usageErrorf("%s:%d: %s: %v", path, t.s.line, t.s.key, unwrapSetError(err))
			}
		}
		a.sources[t.f.Name] = sourceConfig
	}
	return nil
}

// unwrapSetError drops pflag's `invalid argument "x" for "--flag" flag:`
// preamble, which names the flag rather than the key.
func unwrapSetError(err error) error {
	if u := errors.Unwrap(err); u != nil {
		return u
	}
	return err
}

// readConfigFile parses the YAML file: one mapping of keys to scalars, or
// to sequences of scalars for repeatable settings.
func readConfigFile(path string) ([]configSetting, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usageErrorf("--%s: %v", configFlag, err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(raw) > maxConfigSize {
		return nil, usageErrorf("%s is larger than %d bytes: not a configuration file", path, maxConfigSize)
	}
	return parseConfig(path, raw)
}

func parseConfig(path string, raw []byte) ([]configSetting, error) {
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // an empty file sets nothing
		}
		return nil, usageErrorf("%s: %v", path, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, usageErrorf("%s: one YAML document expected", path)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, usageErrorf("%s:%d: want a mapping of settings (key: value)", path, root.Line)
	}
	seen := make(map[string]int)
	var out []configSetting
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, usageErrorf("%s:%d: a key must be a name", path, k.Line)
		}
		if first, dup := seen[k.Value]; dup {
			return nil, usageErrorf("%s:%d: %s is already set on line %d", path, k.Line, k.Value, first)
		}
		seen[k.Value] = k.Line
		s := configSetting{key: k.Value, line: k.Line}
		switch v.Kind {
		case yaml.ScalarNode:
			if v.Tag == "!!null" {
				return nil, usageErrorf("%s:%d: %s has no value (delete the line to keep the default)", path, k.Line, k.Value)
			}
			s.values = []string{v.Value}
		case yaml.SequenceNode:
			s.list = true
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, usageErrorf("%s:%d: %s: want a list of values", path, item.Line, k.Value)
				}
				s.values = append(s.values, item.Value)
			}
		default:
			return nil, usageErrorf("%s:%d: %s: want a value or a list of values, not a mapping", path, k.Line, k.Value)
		}
		out = append(out, s)
	}
	return out, nil
}
