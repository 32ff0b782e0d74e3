# Vault policy for Rotavault with --vault-transit-key rotavault (Transit
# engine at --vault-transit-mount transit): attach it together with
# deploy/vault-policy.hcl. Change "transit" and the key name "rotavault" in
# the paths when you change those flags.
#
#   vault secrets enable transit
#   vault write -f transit/keys/rotavault
#   vault policy write rotavault-transit deploy/vault-policy-transit.hcl
#
# Nothing else under transit/: the token can neither read, rotate, export nor
# delete the key, nor encrypt arbitrary data with it.

# A new data key for this process (once at start-up), returned in the clear
# and wrapped by the Transit key.
path "transit/datakey/plaintext/rotavault" {
  capabilities = ["update"]
}

# Unwrapping the data keys the records were sealed under (each once per
# process; the unwrapped keys are cached).
path "transit/decrypt/rotavault" {
  capabilities = ["update"]
}
