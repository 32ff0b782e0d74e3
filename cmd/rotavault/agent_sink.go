package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/types/known/timestamppb"

	rvclient "github.com/rotavault/rotavault/client"
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// fileSink keeps one file holding a credential's current access token.
type fileSink struct {
	path string
	// json writes the object `token get --json` prints instead of the
	// token alone.
	json bool
}

// publish writes tok to the file, or removes the file when tok is nil. A
// reader of the file sees the old content or the new, never a part: the
// new content is written to a temporary file in the same directory
// (renames are atomic only within a file system), synced, and renamed
// over the old one.
func (s *fileSink) publish(tok *rvclient.Token) error {
	if tok == nil {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove sink %s: %w", s.path, err)
		}
		return nil
	}
	content := []byte(tok.AccessToken)
	if s.json {
		var b bytes.Buffer
		if err := printJSON(&b, tokenResponse(tok)); err != nil {
			return err
		}
		content = b.Bytes()
	}
	return writeFileAtomic(s.path, content)
}

// tokenResponse is tok as GetAccessToken returned it, for the JSON
// format `token get --json` prints.
func tokenResponse(tok *rvclient.Token) *rotavaultv1.GetAccessTokenResponse {
	r := &rotavaultv1.GetAccessTokenResponse{
		AccessToken: tok.AccessToken, TokenType: tok.TokenType, InstanceUrl: tok.InstanceURL,
		FamilyId: tok.FamilyID, Generation: tok.Generation, Fingerprint: tok.Fingerprint,
	}
	if !tok.Expiry.IsZero() {
		r.ExpireTime = timestamppb.New(tok.Expiry)
	}
	if !tok.IssuedAt.IsZero() {
		r.IssueTime = timestamppb.New(tok.IssuedAt)
	}
	if !tok.UseUntil.IsZero() {
		r.UseUntil = timestamppb.New(tok.UseUntil)
	}
	return r
}

// writeFileAtomic replaces path with content, mode 0600, atomically.
func writeFileAtomic(path string, content []byte) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	// CreateTemp makes the file 0600 before anything is written to it.
	tmp, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("write sink %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(content); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("write sink %s: %w", path, err)
	}
	return nil
}
