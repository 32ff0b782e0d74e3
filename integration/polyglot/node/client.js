// A Rotavault consumer in Node.js: @grpc/grpc-js with @grpc/proto-loader,
// which reads proto/ at run time (no generated code).
//
// Driven by integration/polyglot_test.go; the same protocol as
// ../python/client.py. It reads one JSON object from stdin (secrets never
// travel in argv or the environment):
//
//   {"server": "127.0.0.1:PORT", "credential_id": "ID", "proto_dir": "...",
//    "register": {"base_url": ..., "client_id": ..., "client_secret": ...,
//                 "scopes": [...], "access_token_lifetime_seconds": N,
//                 "refresh_token": ...}}                      // optional
//
// and prints one JSON object per line on stdout, never a token or a secret:
// registered, token, watching, notice (until FAMILY_REVOKED), refused.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEADLINE_MS = 30000; // per unary call and for the notice

function emit(event, fields) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

// The API's definition: lowercase hex of the first 8 bytes of SHA-256.
function fingerprint(accessToken) {
  return crypto.createHash('sha256').update(accessToken, 'utf8').digest('hex').slice(0, 16);
}

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp)));
  });
}

// Yields [field number, value] of a serialized message's varint and
// length-delimited fields: enough for google.rpc.Status, Any and ErrorInfo
// without their .proto files.
function* wireFields(buf) {
  let i = 0;
  const varint = () => {
    let value = 0n;
    let shift = 0n;
    for (;;) {
      const b = buf[i++];
      value |= BigInt(b & 0x7f) << shift;
      shift += 7n;
      if (b < 0x80) return value;
    }
  };
  while (i < buf.length) {
    const key = varint();
    const number = Number(key >> 3n);
    const wireType = Number(key & 7n);
    if (wireType === 0) {
      yield [number, varint()];
    } else if (wireType === 2) {
      const n = Number(varint());
      yield [number, buf.subarray(i, i + n)];
      i += n;
    } else if (wireType === 1) {
      i += 8;
    } else if (wireType === 5) {
      i += 4;
    } else {
      throw new Error(`unsupported wire type ${wireType}`);
    }
  }
}

// The google.rpc.ErrorInfo reason in a gRPC error's status details.
function errorReason(err) {
  const details = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  for (const status of details) {
    for (const [number, anyBytes] of wireFields(status)) {
      if (number !== 3) continue; // Status.details
      const any = new Map(wireFields(anyBytes));
      if (String(any.get(1) || '').endsWith('/google.rpc.ErrorInfo')) {
        const info = new Map(wireFields(any.get(2) || Buffer.alloc(0)));
        return String(info.get(1) || '');
      }
    }
  }
  return '';
}

function codeName(code) {
  return Object.keys(grpc.status).find((k) => grpc.status[k] === code) || String(code);
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function main() {
  const cfg = await readStdin();
  const protoDir = cfg.proto_dir || path.join(__dirname, '..', '..', '..', 'proto');
  const def = protoLoader.loadSync(
    ['rotavault/v1/token_vault.proto', 'rotavault/v1/credential_admin.proto'],
    { includeDirs: [protoDir], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true },
  );
  const v1 = grpc.loadPackageDefinition(def).rotavault.v1;
  const creds = grpc.credentials.createInsecure();
  const vault = new v1.TokenVaultService(cfg.server, creds);
  const cred = cfg.credential_id;

  try {
    const reg = cfg.register;
    if (reg) {
      const admin = new v1.CredentialAdminService(cfg.server, creds);
      const created = await unary(admin, 'CreateCredential', {
        credential_id: cred,
        spec: {
          provider_kind: 'PROVIDER_KIND_SALESFORCE',
          base_url: reg.base_url,
          client_id: reg.client_id,
          client_secret: reg.client_secret,
          scopes: reg.scopes,
          access_token_lifetime: { seconds: String(reg.access_token_lifetime_seconds), nanos: 0 },
        },
      });
      const reauth = await unary(vault, 'Reauthenticate', {
        credential_id: cred,
        refresh_token_import: { refresh_token: reg.refresh_token },
      });
      admin.close();
      if (reauth.result !== 'family_activated') throw new Error(`reauthenticate answered ${reauth.result}`);
      emit('registered', {
        created_status: created.credential.status,
        has_client_secret: created.credential.has_client_secret,
        family_id: reauth.family_activated.family_id,
        generation: Number(reauth.family_activated.generation),
      });
    }

    const tok = await unary(vault, 'GetAccessToken', { credential_id: cred });
    emit('token', {
      fingerprint: fingerprint(tok.access_token),
      reported_fingerprint: tok.fingerprint,
      token_type: tok.token_type,
      instance_url: tok.instance_url,
      family_id: tok.family_id,
      generation: Number(tok.generation),
      scopes: tok.scopes,
      expire_unix: Number(tok.expire_time ? tok.expire_time.seconds : 0),
    });

    await new Promise((resolve, reject) => {
      const call = vault.WatchRevocations({ credential_ids: [cred] }, { deadline: deadline() });
      let done = false;
      call.on('data', (msg) => {
        if (msg.event === 'started') {
          emit('watching', { cursor_set: Boolean(msg.started.cursor) });
        } else if (msg.event === 'notice') {
          const n = msg.notice;
          emit('notice', {
            credential_id: n.credential_id,
            family_id: n.family_id,
            generation: Number(n.generation),
            kind: n.kind,
            reason: n.reason,
            provider_revocation: n.provider_revocation,
            cursor_set: Boolean(n.cursor),
          });
          if (n.kind === 'NOTICE_KIND_FAMILY_REVOKED' && !done) {
            done = true;
            call.cancel();
            resolve();
          }
        }
      });
      call.on('error', (err) => {
        if (!done) reject(err);
      });
      call.on('end', () => {
        if (!done) reject(new Error('watch ended without a FAMILY_REVOKED notice'));
      });
    });

    try {
      await unary(vault, 'GetAccessToken', { credential_id: cred });
      emit('refused', { code: 'OK', reason: '' });
    } catch (err) {
      if (err.code === undefined) throw err;
      emit('refused', { code: codeName(err.code), reason: errorReason(err) });
    }
  } finally {
    vault.close();
  }
}

main().catch((err) => {
  // Status errors carry a code and a message, never a token.
  process.stderr.write(`client.js: ${err.code !== undefined ? codeName(err.code) + ': ' : ''}${err.message}\n`);
  process.exit(1);
});
