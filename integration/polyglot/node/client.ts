// A Rotavault consumer in TypeScript: @grpc/grpc-js with typed stubs that
// ts-proto generates from proto/ (buf.gen.ts.yaml, into gen-ts/), and
// google.rpc's Status, ErrorInfo and RetryInfo generated from googleapis'
// status.proto and error_details.proto (the npm package google-proto-files)
// to read rich errors. The channel loads the published service config
// (clients/service-config.json): UNAVAILABLE is retried with backoff.
//
// Driven by integration/polyglot_test.go; the same protocol as
// ../python/client.py. It reads one JSON object from stdin (secrets never
// travel in argv or the environment):
//
//   {"server": "127.0.0.1:PORT", "credential_id": "ID", "service_config": "PATH",
//    "register": {"base_url": ..., "client_id": ..., "client_secret": ...,
//                 "scopes": [...], "access_token_lifetime_seconds": N,
//                 "refresh_token": ...}}                      // optional
//
// and prints one JSON object per line on stdout, never a token or a secret:
// registered, unavailable (each UNAVAILABLE that outlasted the retry policy),
// token (with until when TokenCache keeps it), cached (the same token asked
// again: from the cache), watching, notice (until FAMILY_REVOKED), refused.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

import { credentials, Metadata, ServiceError, status as grpcStatus } from '@grpc/grpc-js';

import { Status } from './gen-ts/google/rpc/status';
import { ErrorInfo, RetryInfo } from './gen-ts/google/rpc/error_details';
import {
  CredentialAdminServiceClient,
  CredentialSpec,
  credentialStatusToJSON,
  ProviderKind,
} from './gen-ts/rotavault/v1/credential_admin';
import {
  GetAccessTokenRequest,
  GetAccessTokenResponse,
  noticeKindToJSON,
  NoticeKind,
  providerRevocationToJSON,
  ReauthenticateRequest,
  revocationReasonToJSON,
  TokenVaultServiceClient,
  WatchRevocationsRequest,
} from './gen-ts/rotavault/v1/token_vault';

const DEADLINE_MS = 30000; // per unary call and for the notice
// How long before its expiry a cached token is replaced (the Go client's
// default), at most a quarter of its lifetime.
const REFRESH_MARGIN_MS = 60000;

interface Config {
  server: string;
  credential_id: string;
  service_config: string;
  register?: {
    base_url: string;
    client_id: string;
    client_secret: string;
    scopes: string[];
    access_token_lifetime_seconds: number;
    refresh_token: string;
  };
}

function emit(event: string, fields: Record<string, unknown>): void {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

// The API's definition: lowercase hex of the first 8 bytes of SHA-256.
function fingerprint(accessToken: string): string {
  return createHash('sha256').update(accessToken, 'utf8').digest('hex').slice(0, 16);
}

function deadline(): Date {
  return new Date(Date.now() + DEADLINE_MS);
}

// call adapts a generated unary method (request, metadata, options,
// callback) to a promise.
function call<Req, Resp>(
  method: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (err: ServiceError | null, resp: Resp) => void) => unknown,
  req: Req,
): Promise<Resp> {
  return new Promise((resolve, reject) => {
    method(req, new Metadata(), { deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// RichError is what a gRPC error's google.rpc.Status details say.
interface RichError {
  reason: string;
  retryDelayMs: number;
}

// richError decodes the grpc-status-details-bin trailer with the
// generated google.rpc messages.
function richError(err: ServiceError): RichError {
  const out: RichError = { reason: '', retryDelayMs: 0 };
  for (const raw of err.metadata?.get('grpc-status-details-bin') ?? []) {
    const st = Status.decode(raw as Buffer);
    for (const any of st.details) {
      const type = any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1);
      if (type === 'google.rpc.ErrorInfo') {
        out.reason = ErrorInfo.decode(any.value).reason;
      } else if (type === 'google.rpc.RetryInfo') {
        const d = RetryInfo.decode(any.value).retryDelay;
        out.retryDelayMs = d ? d.seconds * 1000 + Math.floor(d.nanos / 1e6) : 0;
      }
    }
  }
  return out;
}

function codeName(code: number): string {
  return grpcStatus[code] ?? String(code);
}

function isServiceError(err: unknown): err is ServiceError {
  return typeof err === 'object' && err !== null && 'code' in err && 'metadata' in err;
}

// getToken asks for an access token. The channel's retry policy already
// retried UNAVAILABLE; when that is not enough, wait as the server's
// RetryInfo says and ask again (a few times).
async function getToken(vault: TokenVaultServiceClient, credentialId: string): Promise<GetAccessTokenResponse> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call(vault.getAccessToken.bind(vault), GetAccessTokenRequest.fromPartial({ credentialId }));
    } catch (err) {
      if (!isServiceError(err) || err.code !== grpcStatus.UNAVAILABLE || attempt === 3) throw err;
      const rich = richError(err);
      emit('unavailable', { code: codeName(err.code), reason: rich.reason, retry_delay_ms: rich.retryDelayMs });
      await sleep(Math.max(rich.retryDelayMs, 100));
    }
  }
}

// TokenCache keeps one credential's access token until
// min(expireTime - margin, useUntil): past useUntil the server may rotate
// the credential at a provider that kills the previous access token, so a
// cache must not hand the token out after it, though it has not expired. A
// server that does not send useUntil leaves expireTime as the only limit.
class TokenCache {
  private token?: GetAccessTokenResponse;
  cacheUntilMs = 0;

  constructor(
    private readonly vault: TokenVaultServiceClient,
    private readonly credentialId: string,
    private readonly nowMs: () => number = Date.now,
  ) {}

  static untilMs(tok: GetAccessTokenResponse): number {
    const expire = tok.expireTime?.getTime() ?? 0;
    const life = expire - (tok.issueTime?.getTime() ?? expire);
    let until = expire - (life > 0 ? Math.min(REFRESH_MARGIN_MS, Math.floor(life / 4)) : REFRESH_MARGIN_MS);
    if (tok.useUntil) until = Math.min(until, tok.useUntil.getTime());
    return until;
  }

  // get returns the cached token while it may be used, else a new one, and
  // whether it came from the cache.
  async get(): Promise<{ tok: GetAccessTokenResponse; fromCache: boolean }> {
    if (this.token && this.nowMs() < this.cacheUntilMs) return { tok: this.token, fromCache: true };
    const tok = await getToken(this.vault, this.credentialId);
    this.token = tok;
    this.cacheUntilMs = TokenCache.untilMs(tok);
    return { tok, fromCache: false };
  }

  drop(): void {
    this.token = undefined;
    this.cacheUntilMs = 0;
  }
}

async function readStdin(): Promise<Config> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString('utf8')) as Config;
}

async function main(): Promise<void> {
  const cfg = await readStdin();
  const options = {
    // The published retry policy; grpc-js needs it as a string.
    'grpc.service_config': readFileSync(cfg.service_config, 'utf8'),
    'grpc.enable_retries': 1,
  };
  const creds = credentials.createInsecure();
  const vault = new TokenVaultServiceClient(cfg.server, creds, options);
  const cred = cfg.credential_id;

  try {
    const reg = cfg.register;
    if (reg) {
      const admin = new CredentialAdminServiceClient(cfg.server, creds, options);
      const created = await call(admin.createCredential.bind(admin), {
        credentialId: cred,
        spec: CredentialSpec.fromPartial({
          providerKind: ProviderKind.PROVIDER_KIND_SALESFORCE,
          baseUrl: reg.base_url,
          clientId: reg.client_id,
          clientSecret: reg.client_secret,
          scopes: reg.scopes,
          accessTokenLifetime: { seconds: reg.access_token_lifetime_seconds, nanos: 0 },
        }),
      });
      const reauth = await call(
        vault.reauthenticate.bind(vault),
        ReauthenticateRequest.fromPartial({ credentialId: cred, refreshTokenImport: { refreshToken: reg.refresh_token } }),
      );
      admin.close();
      const activated = reauth.familyActivated;
      if (!activated) throw new Error('reauthenticate did not activate a family');
      emit('registered', {
        created_status: credentialStatusToJSON(created.credential!.status),
        has_client_secret: created.credential!.hasClientSecret,
        family_id: activated.familyId,
        generation: activated.generation,
      });
    }

    const cache = new TokenCache(vault, cred);
    const { tok } = await cache.get();
    emit('token', {
      fingerprint: fingerprint(tok.accessToken),
      reported_fingerprint: tok.fingerprint,
      token_type: tok.tokenType,
      instance_url: tok.instanceUrl,
      family_id: tok.familyId,
      generation: tok.generation,
      scopes: tok.scopes,
      expire_unix: tok.expireTime ? Math.floor(tok.expireTime.getTime() / 1000) : 0,
      use_until_ms: tok.useUntil ? tok.useUntil.getTime() : 0,
      cache_until_ms: cache.cacheUntilMs,
    });
    const again = await cache.get();
    emit('cached', { fingerprint: fingerprint(again.tok.accessToken), from_cache: again.fromCache });

    await new Promise<void>((resolve, reject) => {
      const stream = vault.watchRevocations(WatchRevocationsRequest.fromPartial({ credentialIds: [cred] }), new Metadata(), { deadline: deadline() });
      let done = false;
      stream.on('data', (msg) => {
        if (msg.started) {
          emit('watching', { cursor_set: Boolean(msg.started.cursor) });
        } else if (msg.notice) {
          const n = msg.notice;
          emit('notice', {
            credential_id: n.credentialId,
            family_id: n.familyId,
            generation: n.generation,
            kind: noticeKindToJSON(n.kind),
            reason: revocationReasonToJSON(n.reason),
            provider_revocation: providerRevocationToJSON(n.providerRevocation),
            cursor_set: Boolean(n.cursor),
          });
          if (n.kind === NoticeKind.NOTICE_KIND_FAMILY_REVOKED && !done) {
            done = true;
            cache.drop(); // the family's tokens are dead
            stream.cancel();
            resolve();
          }
        }
      });
      stream.on('error', (err) => {
        if (!done) reject(err);
      });
      stream.on('end', () => {
        if (!done) reject(new Error('watch ended without a FAMILY_REVOKED notice'));
      });
    });

    try {
      await call(vault.getAccessToken.bind(vault), GetAccessTokenRequest.fromPartial({ credentialId: cred }));
      emit('refused', { code: 'OK', reason: '' });
    } catch (err) {
      if (!isServiceError(err)) throw err;
      emit('refused', { code: codeName(err.code), reason: richError(err).reason });
    }
  } finally {
    vault.close();
  }
}

main().catch((err: unknown) => {
  // Status errors carry a code and a message, never a token.
  const code = isServiceError(err) ? codeName(err.code) + ': ' : '';
  process.stderr.write(`client.ts: ${code}${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
