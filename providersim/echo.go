package providersim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// Echo is a way a provider echoes a refused request back in its
// error_description: some do, to help a developer, and a hostile one does to
// make its client write the secrets it was sent into logs and audit trails.
// See EchoRequests.
type Echo int

const (
	// EchoNone: error descriptions are Salesforce's fixed texts.
	EchoNone Echo = iota
	// EchoRaw writes the parameters' values as they are.
	EchoRaw
	// EchoForm writes the parameters form-encoded, as the body was sent
	// ("RT%2Frefresh%2Btoken", a space as '+').
	EchoForm
	// EchoPathEscaped writes each value path-escaped (a space as %20).
	EchoPathEscaped
	// EchoBasic writes an "Authorization: Basic" header: standard base64 of
	// the form-encoded client id, ':' and client secret (RFC 6749 §2.3.1),
	// whether the client sent one or posted its secret.
	EchoBasic
	// EchoBasicURL is EchoBasic in the URL alphabet without padding.
	EchoBasicURL
	// EchoBase64 writes each value in standard base64 with padding.
	EchoBase64
	// EchoBase64URL writes each value in the URL alphabet without padding.
	EchoBase64URL
	// EchoJSON writes the parameters as a JSON object the way Go escapes it
	// (<, > and & as \u003c...), inside the JSON error body: the client
	// decodes the body and holds the escaped text.
	EchoJSON
	// EchoJSONASCII writes them as PHP and Python do: '/' as \/ and every
	// non-ASCII character as \uXXXX.
	EchoJSONASCII
)

// Echoes lists every Echo but EchoNone.
func Echoes() []Echo {
	return []Echo{EchoRaw, EchoForm, EchoPathEscaped, EchoBasic, EchoBasicURL, EchoBase64, EchoBase64URL, EchoJSON, EchoJSONASCII}
}

func (e Echo) String() string {
	names := []string{"none", "raw", "form", "path_escaped", "basic", "basic_url", "base64", "base64_url", "json", "json_ascii"}
	if e < 0 || int(e) >= len(names) {
		return fmt.Sprintf("Echo(%d)", int(e))
	}
	return names[e]
}

// EchoRequests makes every later OAuth error answer of the token,
// revocation, introspection and device authorization endpoints carry the
// request echoed as e in its error_description (the error code stays).
// EchoNone turns it off. It panics on an unknown Echo, a programming error.
func (s *Server) EchoRequests(e Echo) {
	if e != EchoNone && !slices.Contains(Echoes(), e) {
		panic(fmt.Sprintf("providersim: EchoRequests with invalid echo %d", int(e)))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.echo = e
}

// answer writes resp, echoing r into an OAuth error answer when
// EchoRequests asks to.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, resp response) {
	s.mu.Lock()
	e := s.echo
	s.mu.Unlock()
	if body, ok := resp.body.(map[string]string); ok && body["error"] != "" && e != EchoNone {
		resp.body = map[string]string{"error": body["error"], "error_description": "you sent: " + echoRequest(e, r)}
	}
	resp.write(w)
}

// echoRequest writes r's parameters, with the client credentials of an HTTP
// Basic header among them, as e does.
func echoRequest(e Echo, r *http.Request) string {
	_ = r.ParseForm() // a no-op when the handler parsed it already
	params := url.Values{}
	for k, vs := range r.PostForm {
		params[k] = slices.Clone(vs)
	}
	creds := readClientCreds(r)
	params.Set("client_id", creds.id)
	if creds.hasSecret {
		params.Set("client_secret", creds.secret)
	}
	switch e {
	case EchoForm:
		return params.Encode()
	case EchoBasic, EchoBasicURL:
		return "Authorization: Basic " + e.spell(basicPair(creds.id, creds.secret))
	case EchoJSON, EchoJSONASCII:
		flat := make(map[string]string, len(params))
		for k := range params {
			flat[k] = params.Get(k)
		}
		raw, _ := json.Marshal(flat) // a map of strings always marshals
		return jsonASCII(e, string(raw))
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range params {
			if !yield(k) {
				return
			}
		}
	})
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%s ", k, e.spell(params.Get(k)))
	}
	return strings.TrimSpace(b.String())
}

// spell writes one value as e does.
func (e Echo) spell(v string) string {
	switch e {
	case EchoForm:
		return url.QueryEscape(v)
	case EchoPathEscaped:
		return url.PathEscape(v)
	case EchoBasic, EchoBase64:
		return base64.StdEncoding.EncodeToString([]byte(v))
	case EchoBasicURL, EchoBase64URL:
		return base64.RawURLEncoding.EncodeToString([]byte(v))
	case EchoJSON, EchoJSONASCII:
		raw, _ := json.Marshal(v) // a string always marshals
		return jsonASCII(e, strings.Trim(string(raw), `"`))
	}
	return v
}

// jsonASCII rewrites Go's JSON text as EchoJSONASCII's dialect.
func jsonASCII(e Echo, s string) string {
	if e != EchoJSONASCII {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '/':
			b.WriteString(`\/`)
		case r > 0x7e && r <= 0xffff:
			fmt.Fprintf(&b, `\u%04x`, r)
		case r > 0xffff:
			r -= 0x10000
			fmt.Fprintf(&b, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// basicPair is what HTTP Basic encodes for a client (RFC 6749 §2.3.1).
func basicPair(id, secret string) string {
	return url.QueryEscape(id) + ":" + url.QueryEscape(secret)
}

// EchoSpellings returns every text any Echo writes for the given secrets of
// a request by clientID (clientSecret among them, for the Basic echoes): what
// a leak check must not find anywhere.
func EchoSpellings(clientID, clientSecret string, secrets ...string) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, v := range append([]string{clientSecret}, secrets...) {
		if v == "" {
			continue
		}
		for _, e := range Echoes() {
			if e != EchoBasic && e != EchoBasicURL {
				add(e.spell(v))
			}
		}
	}
	if clientSecret != "" {
		add(EchoBasic.spell(basicPair(clientID, clientSecret)))
		add(EchoBasicURL.spell(basicPair(clientID, clientSecret)))
	}
	return out
}
