package client_test

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
)

// TestProtoPackageOptionsStay pins the protos' per-language package
// options. Stubs generated for Java and C# take their package and class
// names from them, so changing one breaks every user of those stubs;
// buf.yaml leaves buf breaking's FILE_SAME_JAVA_* and
// FILE_SAME_CSHARP_NAMESPACE off (they were set after the first release),
// and this test guards them instead.
func TestProtoPackageOptionsStay(t *testing.T) {
	files := map[string]struct {
		fd    protoreflect.FileDescriptor
		outer string
	}{
		"token_vault.proto":      {rotavaultv1.File_rotavault_v1_token_vault_proto, "TokenVaultProto"},
		"credential_admin.proto": {rotavaultv1.File_rotavault_v1_credential_admin_proto, "CredentialAdminProto"},
	}
	for name, f := range files {
		o := f.fd.Options().(*descriptorpb.FileOptions)
		got := []string{o.GetJavaPackage(), o.GetJavaOuterClassname(), o.GetCsharpNamespace(), o.GetGoPackage()}
		want := []string{"io.github.rotavault.v1", f.outer, "Rotavault.V1", "github.com/rotavault/rotavault/gen/rotavault/v1;rotavaultv1"}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: option %d is %q, want %q", name, i, got[i], want[i])
			}
		}
		if !o.GetJavaMultipleFiles() {
			t.Errorf("%s: java_multiple_files is off", name)
		}
	}
}
