package server

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rotavault/rotavault/broker/authflow"
	"github.com/rotavault/rotavault/broker/option"
)

// TestEveryErrorReasonIsDocumentedInTheAPI: a client in another language
// learns the ErrorInfo reasons from the proto files' comments, so every
// reason this server can send (a Reason* constant of this package, or a
// reason the broker names for the server to pass on) appears there.
func TestEveryErrorReasonIsDocumentedInTheAPI(t *testing.T) {
	var api strings.Builder
	protos, err := filepath.Glob(filepath.Join("..", "proto", "rotavault", "v1", "*.proto"))
	if err != nil || len(protos) == 0 {
		t.Fatalf("proto files: %v %v", protos, err)
	}
	for _, p := range protos {
		raw, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		api.Write(raw)
	}
	reasons := []string{authflow.ScopeNotAllowed, option.ReuseGraceTooShort, "MIN_LIFETIME_UNATTAINABLE"}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range file.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if !strings.HasPrefix(name.Name, "Reason") || i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						v, err := strconv.Unquote(lit.Value)
						if err != nil {
							t.Fatal(err)
						}
						reasons = append(reasons, v)
					}
				}
			}
		}
	}
	if len(reasons) < 15 {
		t.Fatalf("found only %d reasons: %v", len(reasons), reasons)
	}
	for _, r := range reasons {
		if !strings.Contains(api.String(), r) {
			t.Errorf("ErrorInfo reason %s is not documented in proto/rotavault/v1", r)
		}
	}
}
