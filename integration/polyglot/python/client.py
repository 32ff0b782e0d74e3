"""A Rotavault consumer in Python, built on stubs generated from proto/ with
buf.gen.python.yaml (protoc's python generator and grpc_python_plugin).

Driven by integration/polyglot_test.go, with the generated stubs' directory on
PYTHONPATH. It reads one JSON object from stdin (secrets never travel in argv
or the environment):

    {"server": "127.0.0.1:PORT", "credential_id": "ID",
     "register": {"base_url": ..., "client_id": ..., "client_secret": ...,
                  "scopes": [...], "access_token_lifetime_seconds": N,
                  "refresh_token": ...}}                       # optional

and prints one JSON object per line on stdout, never a token or a secret:

    {"event": "registered", ...}   CreateCredential + Reauthenticate (import)
    {"event": "token", ...}        GetAccessToken; fingerprint computed here
    {"event": "watching", ...}     WatchRevocations is live (after `started`)
    {"event": "notice", ...}       every notice, until FAMILY_REVOKED
    {"event": "refused", ...}      GetAccessToken after the revocation: the
                                   status code and the ErrorInfo reason
"""

import hashlib
import json
import sys

import grpc
from google.protobuf import duration_pb2

from rotavault.v1 import credential_admin_pb2
from rotavault.v1 import credential_admin_pb2_grpc
from rotavault.v1 import token_vault_pb2
from rotavault.v1 import token_vault_pb2_grpc

DEADLINE = 30  # seconds, per unary call and for the notice


def emit(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)


def fingerprint(access_token):
    # The API's definition: lowercase hex of the first 8 bytes of SHA-256.
    return hashlib.sha256(access_token.encode()).hexdigest()[:16]


def wire_fields(data):
    """Yields (field number, value) of a serialized message's varint and
    length-delimited fields: enough for google.rpc.Status, Any and ErrorInfo
    without their generated classes."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            yield number, varint()
        elif wire_type == 2:
            n = varint()
            yield number, data[i:i + n]
            i += n
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:
            raise ValueError("unsupported wire type %d" % wire_type)


def error_reason(err):
    """The google.rpc.ErrorInfo reason in a gRPC error's status details."""
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for number, any_bytes in wire_fields(value):
            if number != 3:  # Status.details
                continue
            any_fields = dict(wire_fields(any_bytes))
            if any_fields.get(1, b"").decode().endswith("/google.rpc.ErrorInfo"):
                info = dict(wire_fields(any_fields.get(2, b"")))
                return info.get(1, b"").decode()
    return ""


def main():
    cfg = json.loads(sys.stdin.readline())
    cred = cfg["credential_id"]
    with grpc.insecure_channel(cfg["server"]) as channel:
        vault = token_vault_pb2_grpc.TokenVaultServiceStub(channel)

        reg = cfg.get("register")
        if reg:
            admin = credential_admin_pb2_grpc.CredentialAdminServiceStub(channel)
            spec = credential_admin_pb2.CredentialSpec(
                provider_kind=credential_admin_pb2.PROVIDER_KIND_SALESFORCE,
                base_url=reg["base_url"],
                client_id=reg["client_id"],
                client_secret=reg["client_secret"],
                scopes=reg["scopes"],
                access_token_lifetime=duration_pb2.Duration(
                    seconds=reg["access_token_lifetime_seconds"]),
            )
            created = admin.CreateCredential(
                credential_admin_pb2.CreateCredentialRequest(credential_id=cred, spec=spec),
                timeout=DEADLINE)
            activated = vault.Reauthenticate(
                token_vault_pb2.ReauthenticateRequest(
                    credential_id=cred,
                    refresh_token_import=token_vault_pb2.RefreshTokenImport(
                        refresh_token=reg["refresh_token"])),
                timeout=DEADLINE).family_activated
            emit("registered",
                 created_status=credential_admin_pb2.CredentialStatus.Name(created.credential.status),
                 has_client_secret=created.credential.has_client_secret,
                 family_id=activated.family_id, generation=activated.generation)

        tok = vault.GetAccessToken(
            token_vault_pb2.GetAccessTokenRequest(credential_id=cred), timeout=DEADLINE)
        emit("token",
             fingerprint=fingerprint(tok.access_token),
             reported_fingerprint=tok.fingerprint,
             token_type=tok.token_type,
             instance_url=tok.instance_url,
             family_id=tok.family_id,
             generation=tok.generation,
             scopes=list(tok.scopes),
             expire_unix=tok.expire_time.seconds)

        stream = vault.WatchRevocations(
            token_vault_pb2.WatchRevocationsRequest(credential_ids=[cred]), timeout=DEADLINE)
        try:
            for msg in stream:
                which = msg.WhichOneof("event")
                if which == "started":
                    emit("watching", cursor_set=bool(msg.started.cursor))
                elif which == "notice":
                    n = msg.notice
                    kind = token_vault_pb2.NoticeKind.Name(n.kind)
                    emit("notice",
                         credential_id=n.credential_id,
                         family_id=n.family_id,
                         generation=n.generation,
                         kind=kind,
                         reason=token_vault_pb2.RevocationReason.Name(n.reason),
                         provider_revocation=token_vault_pb2.ProviderRevocation.Name(n.provider_revocation),
                         cursor_set=bool(n.cursor))
                    if kind == "NOTICE_KIND_FAMILY_REVOKED":
                        break
        finally:
            stream.cancel()

        try:
            vault.GetAccessToken(
                token_vault_pb2.GetAccessTokenRequest(credential_id=cred), timeout=DEADLINE)
            emit("refused", code="OK", reason="")
        except grpc.RpcError as err:
            emit("refused", code=err.code().name, reason=error_reason(err))


if __name__ == "__main__":
    main()
