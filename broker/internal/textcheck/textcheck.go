// Package textcheck holds the checks the broker and its parts apply to
// text a caller sends before it reaches a record, a log line or a provider.
package textcheck

// Printable reports whether s holds no control characters.
func Printable(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
