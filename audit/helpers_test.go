package audit

import "encoding/json"

func mustParseBody(line []byte, b *recordBody) {
	canonical := append(append([]byte(nil), line[:len(line)-macSuffix]...), '}')
	if err := json.Unmarshal(canonical, b); err != nil {
		panic(err)
	}
}

func mustMarshal(b recordBody) []byte {
	out, err := json.Marshal(b)
	if err != nil {
		panic(err)
	}
	return out
}
