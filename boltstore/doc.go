// Package boltstore is the default store.Store of a single Rotavault node: one
// bbolt file under the node's data directory, every value sealed with
// AES-256-GCM under a key the operator supplies (see ParseKey, LoadKeyFile).
//
// # Record format
//
// Each record in the records bucket is
//
//	format (1 byte) | key id (8 bytes) | version (uint64, big endian) | nonce (12 bytes) | ciphertext and tag
//
// The associated data of the seal binds the header (format, key id, version)
// and the record's key, so a ciphertext moved to another key or replayed with
// another version fails to open (ErrCorrupt). A whole older record of the
// same key, copied back by someone who can write the file, still opens:
// rollback is outside what per-record encryption can detect.
//
// The key id names the key a record was sealed under, so Open can tell a
// record under an unknown key (ErrUnknownKey) from a damaged one
// (ErrCorrupt), and a store can be read while its records move from old keys
// (Options.PreviousKeys) to the current one (RotateKey).
//
// Nonces are random 96-bit values, so one key should seal at most 2^32
// records over its life; rotate keys well before that.
//
// A metadata bucket, outside the user key space, holds the store format
// version and a key check value sealed under the key the store was created
// with or last rotated to, so Open recognises a wrong key even in an empty
// store.
//
// Deleted and overwritten records leave their ciphertext in bbolt's free
// pages until the pages are reused; only the encryption protects it.
package boltstore
