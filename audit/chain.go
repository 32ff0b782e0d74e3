package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
)

const (
	macSize = sha256.Size
	// macPrefix and macClose frame the mac, always the line's last field.
	macPrefix = `,"mac":"`
	macClose  = `"}`
	macSuffix = len(macPrefix) + 2*macSize + len(macClose)
	// maxLineLen bounds a line the verifier will read: records are a few
	// hundred bytes, so a longer line is damage, not a record.
	maxLineLen = 1 << 20
)

// MAC is a record's HMAC-SHA256.
type MAC [macSize]byte

// String returns the MAC as lowercase hex, as written in the file.
func (m MAC) String() string { return hex.EncodeToString(m[:]) }

// Head identifies a chain's last record: what the store anchors.
type Head struct {
	Seq uint64 `json:"seq"`
	MAC string `json:"mac"` // lowercase hex
}

// macKey is the trail's HMAC key. Its Format and LogValue redact, so that a
// key printed or logged by mistake, with any verb, shows nothing of it.
type macKey struct{ b [32]byte }

func (macKey) Format(f fmt.State, _ rune) { io.WriteString(f, "audit.key(redacted)") }

func (macKey) LogValue() slog.Value { return slog.StringValue("redacted") }

// recordBody is a record without its mac: the canonical bytes are its
// JSON encoding. Event is embedded so its fields are flattened into the
// line (Event must not gain a MarshalJSON method: it would be promoted and
// replace this encoding).
type recordBody struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	Event
}

func computeMAC(key *macKey, prev MAC, canonical []byte) MAC {
	h := hmac.New(sha256.New, key.b[:])
	h.Write(prev[:])
	h.Write(canonical)
	var m MAC
	h.Sum(m[:0])
	return m
}

// encodeRecord returns the line (with its newline) for e at seq after prev.
func encodeRecord(key *macKey, seq uint64, prev MAC, e Event) ([]byte, MAC, error) {
	body, err := json.Marshal(recordBody{Seq: seq, Prev: prev.String(), Event: e})
	if err != nil {
		return nil, MAC{}, fmt.Errorf("audit: encode: %w", err)
	}
	mac := computeMAC(key, prev, body)
	line := make([]byte, 0, len(body)+macSuffix)
	line = append(line, body[:len(body)-1]...)
	line = append(line, macPrefix...)
	line = hex.AppendEncode(line, mac[:])
	line = append(line, macClose...)
	line = append(line, '\n')
	return line, mac, nil
}

// Problem names what is wrong with a record.
type Problem string

// Problems found by Verify and Open.
const (
	ProblemNotJSON        Problem = "not valid JSON"
	ProblemMalformed      Problem = "malformed record"
	ProblemIncomplete     Problem = "incomplete last line"
	ProblemBadMAC         Problem = "bad mac"
	ProblemSeqGap         Problem = "seq gap"
	ProblemPrevMismatch   Problem = "prev mismatch"
	ProblemTruncated      Problem = "truncated below anchor"
	ProblemAnchorMismatch Problem = "does not match the anchored head"
	ProblemMissing        Problem = "audit file missing"
	ProblemNoKey          Problem = "no audit key in the store"
	ProblemNoAnchor       Problem = "no anchored head"
	ProblemRolledBack     Problem = "store older than its witness"
)

// ErrChainBroken is wrapped by every *ChainError.
var ErrChainBroken = errors.New("audit chain broken")

// ChainError names the first broken record.
type ChainError struct {
	// Line is the 1-based line number of the record; for truncation, the
	// line where the first missing record should be.
	Line int
	// Seq is the seq the record claims, or the seq expected there when it
	// claims none (malformed, missing).
	Seq     uint64
	Problem Problem
	Detail  string
}

func (e *ChainError) Error() string {
	return fmt.Sprintf("audit chain broken at line %d (seq %d): %s: %s", e.Line, e.Seq, e.Problem, e.Detail)
}

func (e *ChainError) Unwrap() error { return ErrChainBroken }

// parsedRecord is a line that is well-formed and carries a mac that its
// own prev and content support.
type parsedRecord struct {
	body recordBody
	prev MAC
	mac  MAC
}

// parseLine checks one line (without its newline) on its own: shape, JSON,
// and mac against the prev it names. Chain position is checked by the
// caller. expectSeq only labels errors of lines that name no seq.
func parseLine(key *macKey, line []byte, lineNo int, expectSeq uint64) (parsedRecord, error) {
	malformed := func(detail string) error {
		return &ChainError{Line: lineNo, Seq: expectSeq, Problem: ProblemMalformed, Detail: detail}
	}
	if !json.Valid(line) {
		return parsedRecord{}, &ChainError{Line: lineNo, Seq: expectSeq, Problem: ProblemNotJSON, Detail: "the line is not one JSON object"}
	}
	n := len(line)
	if n < macSuffix+2 || !bytes.HasSuffix(line, []byte(macClose)) ||
		!bytes.Equal(line[n-macSuffix:n-macSuffix+len(macPrefix)], []byte(macPrefix)) {
		return parsedRecord{}, malformed(`the line does not end in the "mac" field: not a chained record (a trail written before the chain existed?)`)
	}
	macHex := line[n-macSuffix+len(macPrefix) : n-len(macClose)]
	var r parsedRecord
	if _, err := hex.Decode(r.mac[:], macHex); err != nil || !bytes.Equal(macHex, hex.AppendEncode(nil, r.mac[:])) {
		return parsedRecord{}, malformed("the mac is not 64 lowercase hex digits")
	}
	canonical := make([]byte, 0, n-macSuffix+1)
	canonical = append(canonical, line[:n-macSuffix]...)
	canonical = append(canonical, '}')
	if err := json.Unmarshal(canonical, &r.body); err != nil {
		return parsedRecord{}, malformed("fields of the wrong type: " + err.Error())
	}
	if r.body.Seq != 0 {
		expectSeq = r.body.Seq
	}
	prev, err := hex.DecodeString(r.body.Prev)
	if err != nil || len(prev) != macSize {
		return parsedRecord{}, malformed("prev is not 64 hex digits")
	}
	copy(r.prev[:], prev)
	if want := computeMAC(key, r.prev, canonical); !hmac.Equal(want[:], r.mac[:]) {
		return parsedRecord{}, &ChainError{Line: lineNo, Seq: r.body.Seq, Problem: ProblemBadMAC,
			Detail: "the record was altered, or written without the audit key"}
	}
	return r, nil
}

// Report is what Verify found in a sound chain.
type Report struct {
	// Records is how many records the file holds.
	Records uint64
	// Last is the last record's head (zero for an empty file).
	Last Head
	// Anchor is the anchored head, nil when the store anchors none.
	Anchor *Head
	// BeyondAnchor counts the records after the anchored one: records
	// written while the store was unreachable. They chain, but could have
	// been cut off undetected.
	BeyondAnchor uint64
	// Witnessed is the newest head the witness holds for this trail (nil
	// without Config.CheckWitness, or when it holds none): the file reaches
	// and matches it, and the store's anchor is not older.
	Witnessed *Head

	lastMAC MAC
}

// chainState follows a chain line by line.
type chainState struct {
	key      *macKey
	anchor   *Head
	line     int
	seq      uint64
	mac      MAC
	anchorOK bool
	// witnessed is the witness's newest head, checked like the anchor.
	witnessed *Head
}

func (s *chainState) next(raw []byte) error {
	s.line++
	r, err := parseLine(s.key, raw, s.line, s.seq+1)
	if err != nil {
		return err
	}
	if r.body.Seq != s.seq+1 {
		detail := fmt.Sprintf("expected seq %d after seq %d: records are missing or out of order", s.seq+1, s.seq)
		if s.seq == 0 {
			detail = fmt.Sprintf("the first record has seq %d, not 1: the start of the trail is missing", r.body.Seq)
		}
		return &ChainError{Line: s.line, Seq: r.body.Seq, Problem: ProblemSeqGap, Detail: detail}
	}
	if r.prev != s.mac {
		return &ChainError{Line: s.line, Seq: r.body.Seq, Problem: ProblemPrevMismatch,
			Detail: "the record does not follow the record before it: the chain was spliced"}
	}
	s.seq, s.mac = r.body.Seq, r.mac
	if s.anchor != nil && s.seq == s.anchor.Seq {
		if s.mac.String() != s.anchor.MAC {
			return &ChainError{Line: s.line, Seq: s.seq, Problem: ProblemAnchorMismatch,
				Detail: "the store anchors another record at this seq: the trail was replaced"}
		}
		s.anchorOK = true
	}
	if w := s.witnessed; w != nil && s.seq == w.Seq && s.mac.String() != w.MAC {
		return &ChainError{Line: s.line, Seq: s.seq, Problem: ProblemAnchorMismatch,
			Detail: "the witness saw another record anchored at this seq: the trail was replaced"}
	}
	return nil
}

func (s *chainState) finish() (Report, error) {
	rep := Report{Records: s.seq, Anchor: s.anchor, lastMAC: s.mac}
	if s.seq > 0 {
		rep.Last = Head{Seq: s.seq, MAC: s.mac.String()}
	}
	if w := s.witnessed; w != nil && s.seq < w.Seq {
		return rep, &ChainError{Line: s.line + 1, Seq: s.seq + 1, Problem: ProblemTruncated,
			Detail: fmt.Sprintf("the file ends at seq %d but the witness saw seq %d anchored: records were cut off", s.seq, w.Seq)}
	}
	if s.anchor != nil {
		if s.seq < s.anchor.Seq {
			return rep, &ChainError{Line: s.line + 1, Seq: s.seq + 1, Problem: ProblemTruncated,
				Detail: fmt.Sprintf("the file ends at seq %d but the store anchors seq %d: records were cut off", s.seq, s.anchor.Seq)}
		}
		if !s.anchorOK && s.anchor.Seq > 0 {
			// Unreachable while next checks every seq; kept so a future
			// change cannot turn a missed anchor into a pass.
			return rep, &ChainError{Line: s.line, Seq: s.seq, Problem: ProblemAnchorMismatch, Detail: "the anchored record was not found"}
		}
		rep.BeyondAnchor = s.seq - s.anchor.Seq
	}
	return rep, nil
}

// verify reads a whole trail from r and checks every record against the
// chain, the anchor and the witness's newest head (nil: none).
func verify(ctx context.Context, r io.Reader, key *macKey, anchor, witnessed *Head) (Report, error) {
	s := &chainState{key: key, anchor: anchor, witnessed: witnessed}
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		if s.line%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return Report{}, fmt.Errorf("audit: verify: %w", err)
			}
		}
		raw, err := readLine(br)
		if errors.Is(err, io.EOF) && len(raw) == 0 {
			return s.finish()
		}
		if errors.Is(err, io.EOF) {
			return Report{}, &ChainError{Line: s.line + 1, Seq: s.seq + 1, Problem: ProblemIncomplete,
				Detail: "the last line has no newline: a write was cut short (crash?) or bytes were appended"}
		}
		if errors.Is(err, errLineTooLong) {
			return Report{}, &ChainError{Line: s.line + 1, Seq: s.seq + 1, Problem: ProblemNotJSON, Detail: err.Error()}
		}
		if err != nil {
			return Report{}, fmt.Errorf("audit: verify: read: %w", err)
		}
		if err := s.next(raw); err != nil {
			return Report{}, err
		}
	}
}

var errLineTooLong = fmt.Errorf("line longer than %d bytes", maxLineLen)

// readLine returns the next line without its newline; io.EOF with the
// partial content when the input ends without one.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxLineLen {
			return nil, errLineTooLong
		}
		switch {
		case err == nil:
			return line[:len(line)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		default:
			return line, err
		}
	}
}
