"""A Rotavault consumer in Python, built on stubs generated from proto/ with
buf.gen.python.yaml (protoc's python generator and grpc_python_plugin), and
google.rpc's Status, ErrorInfo and RetryInfo generated from googleapis'
status.proto and error_details.proto to read rich errors. The channel loads
the published service config (clients/service-config.json): UNAVAILABLE is
retried with backoff.

Driven by integration/polyglot_test.go, with the generated stubs' directory on
PYTHONPATH. It reads one JSON object from stdin (secrets never travel in argv
or the environment):

    {"server": "127.0.0.1:PORT", "credential_id": "ID", "service_config": "PATH",
     "register": {"base_url": ..., "client_id": ..., "client_secret": ...,
                  "scopes": [...], "access_token_lifetime_seconds": N,
                  "refresh_token": ...}}                       # optional

and prints one JSON object per line on stdout, never a token or a secret:

    {"event": "registered", ...}   CreateCredential + Reauthenticate (import)
    {"event": "unavailable", ...}  UNAVAILABLE outlasted the retry policy: the
                                   ErrorInfo reason and RetryInfo delay
    {"event": "token", ...}        GetAccessToken; fingerprint computed here,
                                   and until when TokenCache keeps the token
    {"event": "cached", ...}       the same token asked again: from the cache
    {"event": "watching", ...}     WatchRevocations is live (after `started`)
    {"event": "notice", ...}       every notice, until FAMILY_REVOKED
    {"event": "refused", ...}      GetAccessToken after the revocation: the
                                   status code and the ErrorInfo reason
"""

import hashlib
import json
import sys
import time

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from google.rpc import status_pb2

from rotavault.v1 import credential_admin_pb2
from rotavault.v1 import credential_admin_pb2_grpc
from rotavault.v1 import token_vault_pb2
from rotavault.v1 import token_vault_pb2_grpc

DEADLINE = 30  # seconds, per unary call and for the notice
# How long before its expiry a cached token is replaced (the Go client's
# default), at most a quarter of its lifetime.
REFRESH_MARGIN = 60  # seconds


def emit(event, **fields):
    print(json.dumps(dict(event=event, **fields)), flush=True)


def fingerprint(access_token):
    # The API's definition: lowercase hex of the first 8 bytes of SHA-256.
    return hashlib.sha256(access_token.encode()).hexdigest()[:16]


def rich_error(err):
    """What a gRPC error's google.rpc.Status details say: the ErrorInfo
    reason and the RetryInfo delay in seconds, decoded with the generated
    google.rpc messages."""
    reason, retry_delay = "", 0.0
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return reason, retry_delay


def get_token(vault, cred):
    """GetAccessToken. The channel's retry policy already retried
    UNAVAILABLE; when that is not enough, wait as the server's RetryInfo
    says and ask again (a few times)."""
    for attempt in range(1, 4):
        try:
            return vault.GetAccessToken(
                token_vault_pb2.GetAccessTokenRequest(credential_id=cred), timeout=DEADLINE)
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                raise
            reason, retry_delay = rich_error(err)
            emit("unavailable", code=err.code().name, reason=reason,
                 retry_delay_ms=int(retry_delay * 1000))
            time.sleep(max(retry_delay, 0.1))


class TokenCache:
    """One credential's access token, cached until min(expire_time - margin,
    use_until): past use_until the server may rotate the credential at a
    provider that kills the previous access token, so a cache must not hand
    the token out after it, though it has not expired. A server that does
    not send use_until leaves expire_time as the only limit. Times are in
    milliseconds since the epoch."""

    def __init__(self, vault, cred, now_ms=lambda: int(time.time() * 1000)):
        self.vault, self.cred, self.now_ms = vault, cred, now_ms
        self.token, self.cache_until_ms = None, 0

    @staticmethod
    def until_ms(tok):
        expire = tok.expire_time.ToMilliseconds()
        life = expire - tok.issue_time.ToMilliseconds()
        margin = REFRESH_MARGIN * 1000
        if life > 0:
            margin = min(margin, life // 4)
        until = expire - margin
        if tok.HasField("use_until"):
            until = min(until, tok.use_until.ToMilliseconds())
        return until

    def get(self):
        """The cached token while it may be used, else a new one; the
        second value says whether it came from the cache."""
        if self.token is not None and self.now_ms() < self.cache_until_ms:
            return self.token, True
        self.token = get_token(self.vault, self.cred)
        self.cache_until_ms = self.until_ms(self.token)
        return self.token, False

    def drop(self):
        self.token, self.cache_until_ms = None, 0


def main():
    cfg = json.loads(sys.stdin.readline())
    cred = cfg["credential_id"]
    # The published retry policy: UNAVAILABLE is retried with backoff.
    with open(cfg["service_config"], encoding="utf-8") as f:
        service_config = f.read()
    options = [("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
    with grpc.insecure_channel(cfg["server"], options=options) as channel:
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

        cache = TokenCache(vault, cred)
        tok, _ = cache.get()
        emit("token",
             fingerprint=fingerprint(tok.access_token),
             reported_fingerprint=tok.fingerprint,
             token_type=tok.token_type,
             instance_url=tok.instance_url,
             family_id=tok.family_id,
             generation=tok.generation,
             scopes=list(tok.scopes),
             expire_unix=tok.expire_time.seconds,
             use_until_ms=tok.use_until.ToMilliseconds(),
             cache_until_ms=cache.cache_until_ms)
        again, from_cache = cache.get()
        emit("cached", fingerprint=fingerprint(again.access_token), from_cache=from_cache)

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
                        cache.drop()  # the family's tokens are dead
                        break
        finally:
            stream.cancel()

        try:
            vault.GetAccessToken(
                token_vault_pb2.GetAccessTokenRequest(credential_id=cred), timeout=DEADLINE)
            emit("refused", code="OK", reason="")
        except grpc.RpcError as err:
            emit("refused", code=err.code().name, reason=rich_error(err)[0])


if __name__ == "__main__":
    main()
