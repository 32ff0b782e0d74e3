# Vault policy for Rotavault's token (rotavault serve --store vault), with the
# defaults --vault-mount secret and --vault-prefix rotavault: change "secret"
# and "rotavault" in the paths below when you change those flags.
#
#   vault policy write rotavault deploy/vault-policy.hcl
#
# It is complete on its own: a token that carries only this policy (Vault's
# "default" policy left out: token_no_default_policy=true on the role) runs
# every Vault-backed test, and start-up refuses a token that lacks any line of
# it. With --vault-transit-key add deploy/vault-policy-transit.hcl.

# The records: read, create (first write of a record) and update (every
# check-and-set write after it).
path "secret/data/rotavault/*" {
  capabilities = ["create", "read", "update"]
}

# Each record's metadata: set cas_required and max_versions when it is
# created (create) or created again after a lost race (update), list the
# records, and delete one with all its versions (delete). Metadata is never
# read.
path "secret/metadata/rotavault/*" {
  capabilities = ["create", "update", "delete", "list"]
}

# The mount's configuration: where the mount itself requires check-and-set
# and bounds versions (vault write secret/config cas_required=true
# max_versions=10), a new record needs no metadata write of its own — one
# Vault write less per record, about five per onboarding. Read at start-up
# and at most once a minute after. Without this rule every new record gets
# its own metadata, as before; nothing else changes.
path "secret/config" {
  capabilities = ["read"]
}

# Start-up asks Vault which of these capabilities the token has, so that a
# missing one fails at start-up with its name instead of at the first
# rotation.
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# A token given in VAULT_TOKEN: start-up looks it up to learn whether it is
# renewable, and the server renews it for as long as it runs (also the tokens
# AppRole and Kubernetes logins return).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
