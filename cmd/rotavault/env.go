package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Environment variables. Rotavault reads families of names that cannot
// collide, and nothing else:
//
//   - Client connection settings, read by every command that talks to a
//     server, under fixed names shaped like Vault's (VAULT_ADDR,
//     VAULT_CACERT, VAULT_CLIENT_CERT…): ROTAVAULT_ADDR (--server),
//     ROTAVAULT_CACERT (--tls-ca), ROTAVAULT_CLIENT_CERT (--tls-cert),
//     ROTAVAULT_CLIENT_KEY (--tls-key), ROTAVAULT_TOKEN_FILE (--token-file),
//     ROTAVAULT_CLIENT_TIMEOUT (--timeout).
//   - Server settings: every flag of `serve` is ROTAVAULT_SERVER_<FLAG>
//     (--tls-cert is ROTAVAULT_SERVER_TLS_CERT), so a flag added to serve
//     has its variable without further code. The offline store and audit
//     commands read the same names for the same settings (--data-dir,
//     --store-key-file, --store-previous-key-file), and the store key
//     itself is ROTAVAULT_SERVER_STORE_KEY.
//   - Agent settings: every flag of `agent` but the connection flags is
//     ROTAVAULT_AGENT_<FLAG> (--sink is ROTAVAULT_AGENT_SINK).
//
// Flags that decide what one call does (--scope, --client-id, --yes,
// --reason, --json…) have no variable: an exported variable must never
// change a credential or skip a confirmation.
const (
	envPrefix       = "ROTAVAULT_"
	serverEnvPrefix = envPrefix + "SERVER_"
	// envStoreKey holds the store key itself (base64), for platforms that
	// inject secrets as environment variables rather than files.
	envStoreKey = serverEnvPrefix + "STORE_KEY"
	// retiredStoreKey is envStoreKey's name before server settings had a
	// prefix of their own.
	retiredStoreKey = envPrefix + "STORE_KEY"

	// envAnnotation on a flag names its variable; an empty name means none.
	envAnnotation = "rotavault_env"
	// settingsPrefixAnnotation on a command gives each of its flags the
	// variable <prefix><FLAG> (serve: ROTAVAULT_SERVER_<FLAG>), unless the
	// flag names its own variable (bindEnv).
	settingsPrefixAnnotation = "rotavault_env_prefix"
)

// Where a flag's value came from, when not from the command line.
const (
	sourceEnv    = "environment"
	sourceConfig = "config file"
)

// flagKey spells a flag's name for a variable: store-key-file →
// STORE_KEY_FILE.
func flagKey(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// serverEnvName is the variable of a server setting:
// --store-key-file ↔ ROTAVAULT_SERVER_STORE_KEY_FILE.
func serverEnvName(flag string) string { return serverEnvPrefix + flagKey(flag) }

// bindEnv gives one flag of fs the variable name ("" for none), whatever
// its command's rule would give it.
func bindEnv(fs *pflag.FlagSet, flag, name string) {
	if err := fs.SetAnnotation(flag, envAnnotation, []string{name}); err != nil {
		panic(err) // a flag registered in this package is misspelt
	}
}

// markSettings makes every flag of cmd a setting read from
// <prefix><FLAG>: serve's flags are ROTAVAULT_SERVER_<FLAG>
// (serverEnvPrefix). Only long-running commands' settings belong here,
// never the flags of a command that changes something once.
func markSettings(cmd *cobra.Command, prefix string) {
	if cmd.Annotations == nil {
		cmd.Annotations = make(map[string]string)
	}
	cmd.Annotations[settingsPrefixAnnotation] = prefix
}

// envVar is the one rule deciding which variable, if any, stands in for
// flag f when cmd runs.
func envVar(cmd *cobra.Command, f *pflag.Flag) string {
	if v, ok := f.Annotations[envAnnotation]; ok && len(v) == 1 {
		return v[0]
	}
	if prefix := cmd.Annotations[settingsPrefixAnnotation]; prefix != "" && f.Name != "help" {
		return prefix + flagKey(f.Name)
	}
	return ""
}

// isListFlag reports whether a flag may be repeated; its environment
// variable then holds a comma-separated list.
func isListFlag(f *pflag.Flag) bool {
	_, ok := f.Value.(pflag.SliceValue)
	return ok
}

// applySettings fills in the flags the command line left unset: from
// their environment variables, then from the configuration file (serve
// --config). Flags set this way count as set (cmd.Flags().Changed),
// exactly as if they had been typed.
func (a *app) applySettings(cmd *cobra.Command) error {
	a.warnRetiredEnv(cmd)
	if err := a.applyEnv(cmd); err != nil {
		return err
	}
	return a.applyConfigFile(cmd)
}

func (a *app) applyEnv(cmd *cobra.Command) error {
	var errs []error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		name := envVar(cmd, f)
		if name == "" || f.Changed {
			return
		}
		v := a.env(name)
		if v == "" {
			return
		}
		values := []string{v}
		if isListFlag(f) {
			values = strings.Split(v, ",")
		}
		for _, v := range values {
			if err := cmd.Flags().Set(f.Name, strings.TrimSpace(v)); err != nil {
				errs = append(errs, usageErrorf("%s: %v", name, err))
				return
			}
		}
		a.sources[f.Name] = sourceEnv
	})
	return errors.Join(errs...)
}

// warnRetiredEnv tells the person about variables of the earlier
// ROTAVAULT_<FLAG> scheme still set in their environment that this command
// no longer reads, and what to use instead; a name that is in use under
// the current scheme is not mentioned.
func (a *app) warnRetiredEnv(cmd *cobra.Command) {
	current := currentEnvNames(cmd.Root())
	warned := make(map[string]bool)
	warn := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		if !warned[msg] {
			warned[msg] = true
			fmt.Fprintln(a.stderr, "warning: "+msg)
		}
	}
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		old := envPrefix + flagKey(f.Name)
		if a.env(old) == "" || current[old] {
			return
		}
		if name := envVar(cmd, f); name != "" {
			warn("%s is no longer read: the variable of --%s is %s", old, f.Name, name)
			return
		}
		warn("%s is ignored: --%s has no environment variable; give it on the command line", old, f.Name)
	})
	if a.env(retiredStoreKey) != "" && !current[retiredStoreKey] {
		warn("%s is no longer read: the store key's variable is %s", retiredStoreKey, envStoreKey)
	}
}

// currentEnvNames lists every variable some command reads.
func currentEnvNames(root *cobra.Command) map[string]bool {
	names := map[string]bool{envStoreKey: true}
	walkFlags(root, func(c *cobra.Command, f *pflag.Flag) {
		if name := envVar(c, f); name != "" {
			names[name] = true
		}
	})
	return names
}

// walkFlags visits each command's own flags (persistent ones at the
// command that declares them).
func walkFlags(root *cobra.Command, visit func(*cobra.Command, *pflag.Flag)) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, fs := range []*pflag.FlagSet{c.PersistentFlags(), c.LocalNonPersistentFlags()} {
			fs.VisitAll(func(f *pflag.Flag) { visit(c, f) })
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// documentEnv appends each flag's environment variable to its help text.
func documentEnv(root *cobra.Command) {
	seen := make(map[*pflag.Flag]bool)
	walkFlags(root, func(c *cobra.Command, f *pflag.Flag) {
		if seen[f] {
			return
		}
		seen[f] = true
		if name := envVar(c, f); name != "" {
			f.Usage += " [$" + name + "]"
		}
	})
}
