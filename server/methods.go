package server

import (
	rotavaultv1 "github.com/rotavault/rotavault/gen/rotavault/v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

// methodRule is what a method requires of its caller.
type methodRule struct {
	role Role
	// credentials returns the credential ids the request names; nil for a
	// method naming none (then only admins may call it).
	credentials func(req any) []string
	// anyCredential: a request naming no credential means "all I may
	// see" (WatchRevocations), allowed to anyone holding the role on some
	// credential and filtered per item.
	anyCredential bool
}

// methodRules is the one table of who may call what. Every RPC must be in
// it (a test enforces this for the Rotavault services); a method missing
// from it is denied to everyone.
func methodRules() map[string]methodRule {
	const (
		vault = "/rotavault.v1.TokenVaultService/"
		admin = "/rotavault.v1.CredentialAdminService/"
	)
	return map[string]methodRule{
		vault + "GetAccessToken":   {role: RoleConsumer, credentials: credentialID},
		vault + "Reauthenticate":   {role: RoleOperator, credentials: credentialID},
		vault + "WatchRevocations": {role: RoleConsumer, credentials: watchedCredentialIDs, anyCredential: true},
		vault + "RevokeCredential": {role: RoleOperator, credentials: credentialID},

		admin + "CreateCredential": {role: RoleAdmin, credentials: credentialID},
		admin + "UpdateCredential": {role: RoleAdmin, credentials: credentialID},
		admin + "GetCredential":    {role: RoleAdmin, credentials: credentialID},
		admin + "ListCredentials":  {role: RoleAdmin},
		admin + "DeleteCredential": {role: RoleAdmin, credentials: credentialID},
		admin + "ListConsumers":    {role: RoleAdmin},
		admin + "BackupStore":      {role: RoleAdmin},
		admin + "VerifyAuditTrail": {role: RoleAdmin},
		admin + "GetServerStatus":  {role: RoleAdmin},

		// Reflection describes every service: admins only.
		"/" + reflectionv1.ServerReflection_ServiceDesc.ServiceName + "/ServerReflectionInfo":      {role: RoleAdmin},
		"/" + reflectionv1alpha.ServerReflection_ServiceDesc.ServiceName + "/ServerReflectionInfo": {role: RoleAdmin},
	}
}

// credentialID extracts the credential_id every single-credential request
// carries. An empty id is still checked: as "no credential", only an admin
// passes, and the handler then rejects it as invalid.
func credentialID(req any) []string {
	r, ok := req.(interface{ GetCredentialId() string })
	if !ok || r.GetCredentialId() == "" {
		return nil
	}
	return []string{r.GetCredentialId()}
}

func watchedCredentialIDs(req any) []string {
	r, ok := req.(*rotavaultv1.WatchRevocationsRequest)
	if !ok {
		return nil
	}
	return r.GetCredentialIds()
}
