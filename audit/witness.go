package audit

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// WitnessLine is one line the witness receives.
//
// The anchored head detects records cut off the file, but not a store
// rolled back together with it: whoever can copy an older rotavault.db
// back (no key needed) restores an older head, and the file cut to match
// verifies. A witness is a copy of every anchored head kept where that
// writer cannot rewrite it. Each anchor, after the store accepted it, is
// written to Config.Witness as one line:
//
//	{"witness":"rotavault-audit","head_key":"audit/head","seq":700,"mac":"<64 hex>","sig":"<64 hex>"}
//
// sig = HMAC-SHA256(witness key, "rotavault-audit-witness-v1\x00" +
// head_key + "\x00" + decimal seq + "\x00" + mac), the witness key being
// HMAC-SHA256(audit key, "rotavault-audit-witness-key-v1"): whoever can
// append to the witness but cannot read the store cannot forge a line, and
// the audit key itself signs nothing but records. Verify with
// Config.CheckWitness takes the newest valid line for its head key and
// requires the store's anchor to be at least as new (the same mac at the
// same seq) and the file to reach and match it. Lines of other head keys,
// other stores (another key) or otherwise unverifiable are skipped: a line
// not signed with the key can neither raise an alarm nor hide a rollback.
type WitnessLine struct {
	Witness string `json:"witness"` // always "rotavault-audit"
	HeadKey string `json:"head_key"`
	Seq     uint64 `json:"seq"`
	MAC     string `json:"mac"`
	Sig     string `json:"sig"`
}

const (
	witnessTag = "rotavault-audit"
	// maxWitnessLine bounds a witness line read back: a real one is about
	// 230 bytes.
	maxWitnessLine = 4 << 10
)

func witnessSig(key *macKey, headKey string, h Head) string {
	wk := hmac.New(sha256.New, key.b[:])
	wk.Write([]byte("rotavault-audit-witness-key-v1"))
	m := hmac.New(sha256.New, wk.Sum(nil))
	m.Write([]byte("rotavault-audit-witness-v1\x00" + headKey + "\x00" + strconv.FormatUint(h.Seq, 10) + "\x00" + h.MAC))
	return hex.EncodeToString(m.Sum(nil))
}

// writeWitness sends h to the witness, if any. anchorMu is held, so lines
// go out in anchoring order. A failure is logged: the record and the
// anchor stand; the witness lags, which Verify tolerates.
func (l *FileLog) writeWitness(h Head) {
	if l.witness == nil {
		return
	}
	line, err := json.Marshal(WitnessLine{Witness: witnessTag, HeadKey: l.headKey, Seq: h.Seq, MAC: h.MAC, Sig: witnessSig(l.key, l.headKey, h)})
	if err == nil {
		_, err = l.witness.Write(append(line, '\n'))
	}
	if err != nil {
		l.log.Error("audit: the anchored head was not sent to the witness", "head_key", l.headKey, "seq", h.Seq, "err", err)
	}
}

// checkWitness reads witness lines and returns the newest valid head for
// headKey (nil: none), or a *ChainError when the store's anchor is older.
func checkWitness(r io.Reader, key *macKey, headKey string, anchor *Head) (*Head, error) {
	var newest *Head
	br := bufio.NewReaderSize(r, maxWitnessLine)
	for {
		raw, err := readLine(br)
		if errors.Is(err, io.EOF) && len(raw) == 0 {
			break
		}
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, errLineTooLong) {
			return nil, fmt.Errorf("audit: read witness: %w", err)
		}
		var w WitnessLine
		if len(raw) > maxWitnessLine || json.Unmarshal(raw, &w) != nil || w.Witness != witnessTag || w.HeadKey != headKey {
			continue
		}
		h := Head{Seq: w.Seq, MAC: w.MAC}
		if !hmac.Equal([]byte(w.Sig), []byte(witnessSig(key, headKey, h))) {
			continue
		}
		if newest == nil || h.Seq > newest.Seq {
			newest = &h
		}
	}
	if newest == nil {
		return nil, nil
	}
	if anchor == nil || anchor.Seq < newest.Seq || (anchor.Seq == newest.Seq && anchor.MAC != newest.MAC) {
		have := "no head"
		if anchor != nil {
			have = fmt.Sprintf("seq %d", anchor.Seq)
		}
		return newest, &ChainError{Line: int(newest.Seq), Seq: newest.Seq, Problem: ProblemRolledBack,
			Detail: fmt.Sprintf("the store anchors %s but the witness saw seq %d anchored: the store was rolled back to an earlier copy, or its head replaced", have, newest.Seq)}
	}
	return newest, nil
}
