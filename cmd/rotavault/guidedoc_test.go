package main

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// The README's activation guide is a list of steps ("### N. Title"), each
// with ```sh blocks of rotavault commands and maybe ```text blocks of the
// output to expect. This file reads them; guide_test.go runs them.

// guideStep is one "### N. Title" subsection of the guide.
type guideStep struct {
	number int
	title  string
	// commands are the step's command lines, in order, continuation lines
	// joined and comments kept (the tokenizer drops them).
	commands []string
	// samples are the lines of its ```text blocks: output the reader
	// should expect, with … standing for any text.
	samples []string
}

var guideStepRE = regexp.MustCompile(`^### (\d+)\. (.+)$`)

// readGuide returns the steps of the README section titled heading. It
// fails t when the section is missing, a ```sh or ```text block lies
// outside a step, is not closed, or is empty, or when the steps are not
// numbered 1, 2, 3….
func readGuide(t *testing.T, readme, heading string) []guideStep {
	t.Helper()
	data, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	start := -1
	for i, l := range lines {
		if l == heading {
			start = i + 1
			break
		}
	}
	if start < 0 {
		t.Fatalf("%s has no section %q", readme, heading)
	}
	var (
		steps   []guideStep
		inBlock string   // "sh" or "text" inside a block
		block   []string // the current block's lines
		blockAt int      // its first line number, for messages
	)
	for i := start; i < len(lines); i++ {
		l := lines[i]
		if inBlock == "" && strings.HasPrefix(l, "## ") {
			break // the next section
		}
		fence := strings.TrimSpace(l)
		switch {
		case inBlock == "sh" && fence == "```":
			cmds, err := blockCommands(block)
			if err != nil {
				t.Fatalf("%s:%d: %v", readme, blockAt, err)
			}
			if len(cmds) == 0 {
				t.Fatalf("%s:%d: a sh block of the guide holds no command", readme, blockAt)
			}
			steps[len(steps)-1].commands = append(steps[len(steps)-1].commands, cmds...)
			inBlock = ""
		case inBlock == "text" && fence == "```":
			if len(block) == 0 {
				t.Fatalf("%s:%d: an empty text block in the guide", readme, blockAt)
			}
			steps[len(steps)-1].samples = append(steps[len(steps)-1].samples, block...)
			inBlock = ""
		case inBlock != "":
			block = append(block, strings.TrimSpace(l))
		case fence == "```sh" || fence == "```text":
			if len(steps) == 0 {
				t.Fatalf("%s:%d: a block before the guide's first step", readme, i+1)
			}
			inBlock, block, blockAt = strings.TrimPrefix(fence, "```"), nil, i+1
		case strings.HasPrefix(fence, "```"):
			t.Fatalf("%s:%d: the guide's blocks are sh (commands it runs) or text (output to expect), not %q", readme, i+1, fence)
		default:
			if m := guideStepRE.FindStringSubmatch(l); m != nil {
				n, _ := strconv.Atoi(m[1])
				if n != len(steps)+1 {
					t.Fatalf("%s:%d: step %d follows step %d", readme, i+1, n, len(steps))
				}
				steps = append(steps, guideStep{number: n, title: m[2]})
			}
		}
	}
	if inBlock != "" {
		t.Fatalf("%s:%d: the guide's %s block is not closed", readme, blockAt, inBlock)
	}
	for _, s := range steps {
		if len(s.commands) == 0 {
			t.Fatalf("step %d (%s) shows no command", s.number, s.title)
		}
	}
	return steps
}

// blockCommands joins continuation lines and drops blank and comment-only
// lines. Every command must run rotavault.
func blockCommands(lines []string) ([]string, error) {
	var cmds []string
	cur := ""
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if cont, ok := strings.CutSuffix(l, `\`); ok {
			cur += cont + " "
			continue
		}
		cur += l
		if words, _, err := shellWords(cur, func(string) (string, bool) { return "", true }); err != nil {
			return nil, fmt.Errorf("%q: %w", cur, err)
		} else if len(words) > 0 {
			if words[0] != "rotavault" {
				return nil, fmt.Errorf("%q: the guide's commands run rotavault, nothing else", cur)
			}
			cmds = append(cmds, cur)
		}
		cur = ""
	}
	if cur != "" {
		return nil, fmt.Errorf("%q: continued past the block's end", cur)
	}
	return cmds, nil
}

// shellWords splits a command line as sh would for the small subset the
// guide uses: words, '…' and "…" quoting, $NAME and ${NAME} (looked up with
// vars; unquoted values are not split further), a # comment at a word's
// start, and a final & (background). Anything else a shell would treat
// specially (pipes, redirections, ;, command substitution, globs) is an
// error: the guide stays copy-pasteable and this runner stays honest.
func shellWords(line string, vars func(string) (string, bool)) (words []string, background bool, err error) {
	var (
		word   strings.Builder
		inWord bool
		quote  byte // 0, '\'' or '"'
	)
	flush := func() {
		if inWord {
			words = append(words, word.String())
		}
		word.Reset()
		inWord = false
	}
	for i := 0; i < len(line); i++ {
		ch := line[i]
		switch {
		case quote == '\'':
			if ch == '\'' {
				quote = 0
			} else {
				word.WriteByte(ch)
			}
		case ch == '$':
			name, n, ok := varName(line[i+1:])
			if !ok {
				return nil, false, fmt.Errorf("unsupported $ expansion at %q", line[i:])
			}
			v, ok := vars(name)
			if !ok {
				return nil, false, fmt.Errorf("unknown variable $%s", name)
			}
			word.WriteString(v)
			inWord = true
			i += n
		case quote == '"':
			switch ch {
			case '"':
				quote = 0
			case '\\', '`':
				return nil, false, fmt.Errorf("unsupported %q inside double quotes", ch)
			default:
				word.WriteByte(ch)
			}
		case ch == ' ' || ch == '\t':
			flush()
		case ch == '\'' || ch == '"':
			quote, inWord = ch, true
		case ch == '#' && !inWord:
			flush()
			return words, background, nil
		case ch == '&':
			if strings.TrimSpace(line[i+1:]) != "" && !strings.HasPrefix(strings.TrimSpace(line[i+1:]), "#") {
				return nil, false, fmt.Errorf("& only ends a command")
			}
			flush()
			background = true
		case strings.IndexByte("|;<>()`\\*?[]{}~", ch) >= 0:
			return nil, false, fmt.Errorf("unsupported shell syntax %q", ch)
		default:
			if background {
				return nil, false, fmt.Errorf("& only ends a command")
			}
			word.WriteByte(ch)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, false, fmt.Errorf("unterminated %c quote", quote)
	}
	flush()
	return words, background, nil
}

// sampleRE turns a sample output line into a regular expression: … stands
// for any text, and timestamps, family ids and generations for any such.
func sampleRE(sample string) *regexp.Regexp {
	holes := []struct{ re, pattern string }{
		{`\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z`, `\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z`},
		{`\b[0-9a-f]{24}\b`, `[0-9a-f]{24}`},
		{`\bgeneration \d+`, `generation \d+`},
		{`…`, `.*`},
	}
	// Each hole becomes a placeholder that QuoteMeta leaves alone.
	for i, h := range holes {
		sample = regexp.MustCompile(h.re).ReplaceAllLiteralString(sample, fmt.Sprintf("\x00%d\x00", i))
	}
	re := regexp.QuoteMeta(sample)
	for i, h := range holes {
		re = strings.ReplaceAll(re, fmt.Sprintf("\x00%d\x00", i), h.pattern)
	}
	return regexp.MustCompile(`(?m)^` + re + `$`)
}

var varNameRE = regexp.MustCompile(`^(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))`)

// varName reads the name after a $ and how many bytes it took.
func varName(s string) (name string, n int, ok bool) {
	m := varNameRE.FindStringSubmatch(s)
	if m == nil {
		return "", 0, false
	}
	return m[1] + m[2], len(m[0]), true
}

func TestGuideSampleRE(t *testing.T) {
	re := sampleRE(`2026-05-04T09:12:44Z  FAMILY_REVOKED  acme  family 919672ad022d06f19dfb8f24  generation 41  reason X  "a (b): …"  cursor …`)
	for line, want := range map[string]bool{
		`2027-01-02T03:04:05Z  FAMILY_REVOKED  acme  family 0123456789abcdef01234567  generation 1  reason X  "a (b): c d"  cursor MS4w`: true,
		`2027-01-02T03:04:05Z  FAMILY_REVOKED  acme  family 0123456789abcdef01234567  generation 1  reason Y  "a (b): c d"  cursor MS4w`: false,
		`2027-01-02T03:04:05Z  FAMILY_REVOKED  acme  family 0123456789abcdef01234567  generation 1  reason X  "a b: c d"  cursor MS4w`:   false,
	} {
		if got := re.MatchString(line); got != want {
			t.Errorf("%s matches %q: %v, want %v", re, line, got, want)
		}
	}
}

func TestGuideShellWords(t *testing.T) {
	vars := func(name string) (string, bool) {
		v, ok := map[string]string{"FILE": "/tmp/a b", "N": "7"}[name]
		return v, ok
	}
	for _, tc := range []struct {
		line    string
		want    []string
		bg      bool
		wantErr bool
	}{
		{line: `rotavault token get acme`, want: []string{"rotavault", "token", "get", "acme"}},
		{line: `rotavault x --f $FILE   # a comment, $UNKNOWN`, want: []string{"rotavault", "x", "--f", "/tmp/a b"}},
		{line: `rotavault x --g ${N}0 --s "api refresh_token" --r 'a $N'`, want: []string{"rotavault", "x", "--g", "70", "--s", "api refresh_token", "--r", "a $N"}},
		{line: `rotavault x --r "INC-1: a#b"`, want: []string{"rotavault", "x", "--r", "INC-1: a#b"}},
		{line: `rotavault watch acme &    # notices`, want: []string{"rotavault", "watch", "acme"}, bg: true},
		{line: `# only a comment`},
		{line: `rotavault x $UNKNOWN`, wantErr: true},
		{line: `rotavault x < file`, wantErr: true},
		{line: `rotavault x | jq .`, wantErr: true},
		{line: `rotavault x & rotavault y`, wantErr: true},
		{line: `rotavault x $(cat f)`, wantErr: true},
		{line: `rotavault x "unterminated`, wantErr: true},
	} {
		got, bg, err := shellWords(tc.line, vars)
		if (err != nil) != tc.wantErr {
			t.Errorf("shellWords(%q) error %v, want error %v", tc.line, err, tc.wantErr)
			continue
		}
		if strings.Join(got, "|") != strings.Join(tc.want, "|") || bg != tc.bg {
			t.Errorf("shellWords(%q) = %q, background %v; want %q, %v", tc.line, got, bg, tc.want, tc.bg)
		}
	}
}
