package provider

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// jsonObject is a response body decoded one field at a time, so that a field
// of an unexpected type costs that field only, not the whole response.
type jsonObject map[string]json.RawMessage

// decodeObject returns the body as a JSON object, or false if it is not one.
func decodeObject(body []byte) (jsonObject, bool) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return nil, false
	}
	var obj jsonObject
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, false
	}
	return obj, true
}

// str returns a JSON string field.
func (o jsonObject) str(key string) (string, bool) {
	raw, ok := o[key]
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// scalarText returns a string field's value or a number field's literal.
func (o jsonObject) scalarText(key string) (string, bool) {
	if s, ok := o.str(key); ok {
		return s, true
	}
	raw, ok := o[key]
	if !ok {
		return "", false
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return "", false
	}
	return n.String(), true
}

// integer returns a number, or a string holding one ("3600"), truncating a
// fraction. Providers disagree on the type of expires_in and exp.
func (o jsonObject) integer(key string) (int64, bool) {
	text, ok := o.scalarText(key)
	if !ok {
		return 0, false
	}
	text = strings.TrimSpace(text)
	if n, err := strconv.ParseInt(text, 10, 64); err == nil {
		return n, true
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsNaN(f) || f >= math.MaxInt64 || f <= math.MinInt64 {
		return 0, false
	}
	return int64(f), true
}

// boolean returns true/false, also given as the strings "true"/"false".
func (o jsonObject) boolean(key string) (bool, bool) {
	raw, ok := o[key]
	if !ok {
		return false, false
	}
	var b bool
	if err := json.Unmarshal(raw, &b); err == nil {
		return b, true
	}
	if s, ok := o.str(key); ok {
		if b, err := strconv.ParseBool(s); err == nil {
			return b, true
		}
	}
	return false, false
}

// scopes returns a space-separated scope string, or a JSON array of strings
// (some servers send one), as a list; nil when absent or empty.
func (o jsonObject) scopes(key string) []string {
	if s, ok := o.str(key); ok {
		return splitScopes(s)
	}
	raw, ok := o[key]
	if !ok {
		return nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil
	}
	return splitScopes(strings.Join(list, " "))
}
