#!/usr/bin/env node
/*
 * front.js - npm s3rver (the store) behind a strict front that answers like S3, for lmtpgw's
 * integration tests. s3rver alone verifies nothing (no signature, no payload hash, no checksum:
 * see ../../../../shared/facts.md), so every request passes these checks first:
 *
 *   - SigV4 (Authorization header), verified with the npm `aws4` signer, an implementation
 *     independent of lmtpgw's: unknown access key 403 InvalidAccessKeyId, wrong signature
 *     403 SignatureDoesNotMatch, no/other auth 403 AccessDenied;
 *   - x-amz-content-sha256 against the body: 400 XAmzContentSHA256Mismatch;
 *   - x-amz-checksum-sha256 (and Content-MD5) against the body: 400 BadDigest;
 *   - Transfer-Encoding (chunked) 501 NotImplemented; a PUT without Content-Length 411;
 *   - If-None-Match: * on PUT and CompleteMultipartUpload: 412 PreconditionFailed when the key
 *     exists; atomic as in S3: conditional writes to one key are serialized here (check and
 *     store under one per-key lock), so of two concurrent writers exactly one gets 200;
 *   - optional "bucket without Object Lock": Object Lock headers get 400 InvalidRequest.
 * then proxies to s3rver. s3rver runs in this process; both listen on 127.0.0.1.
 *
 * Usage: node front.js [--front-port N] [--store-port N] [--dir DIR] [--keys AK:SECRET,...]
 *                      [--region us-east-1]
 * Prints one JSON line {"front_port":..,"store_port":..} on stdout when both listen; exits on
 * SIGTERM or when its stdin ends (the launcher keeps it open: its death stops the server).
 *
 * Control endpoint on the front (not signed; loopback tests only):
 *   POST /_control/fail?count=N&status=503&code=SlowDown   next N S3 requests answer that
 *        (&match=TEXT: only requests whose URL contains TEXT count and fail)
 *   POST /_control/cut?after=K      the next request carrying a body is cut after K body bytes
 *   POST /_control/nolock?on=1      refuse Object Lock headers (a bucket without Object Lock)
 *   POST /_control/reset            clear faults and the request log
 *   GET  /_control/requests         JSON list of the S3 requests seen: method, url, headers,
 *                                   answer status (most recent last, at most 200)
 */
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');
const aws4 = require('aws4');
const S3rver = require('s3rver');

function parseArgs(argv) {
  const opts = { frontPort: 0, storePort: 0, dir: null, keys: 'AKIDLMTPGWTEST:lmtpgw-test-secret', region: 'us-east-1' };
  for (let i = 2; i < argv.length; i += 2) {
    const k = argv[i], v = argv[i + 1];
    if (k === '--front-port') opts.frontPort = Number(v);
    else if (k === '--store-port') opts.storePort = Number(v);
    else if (k === '--dir') opts.dir = v;
    else if (k === '--keys') opts.keys = v;
    else if (k === '--region') opts.region = v;
    else throw new Error('unknown option ' + k);
  }
  const keys = {};
  for (const pair of opts.keys.split(',')) {
    const i = pair.indexOf(':');
    keys[pair.slice(0, i)] = pair.slice(i + 1);
  }
  opts.keys = keys;
  return opts;
}

const opts = parseArgs(process.argv);
const state = { fail: null, cut: null, nolock: false, requests: [], counter: 0 };

function xmlEscape(s) {
  return String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function s3Error(res, status, code, message, extra) {
  const rid = 'FRONT' + (++state.counter).toString(16).toUpperCase().padStart(8, '0');
  const body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>' + xmlEscape(code) +
    '</Code><Message>' + xmlEscape(message) + '</Message>' + (extra || '') +
    '<RequestId>' + rid + '</RequestId><HostId>front</HostId></Error>';
  res.writeHead(status, { 'Content-Type': 'application/xml', 'x-amz-request-id': rid,
                          'Content-Length': Buffer.byteLength(body), 'Connection': 'close' });
  res.end(body);
  return status;
}

function parseAuth(value) {
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(value || '');
  if (!m) return null;
  return { ak: m[1], date: m[2], region: m[3], service: m[4], signed: m[5].split(';'), signature: m[6] };
}

/* The signature aws4 computes for this request, from exactly the signed headers. */
function expectedSignature(req, auth, secret) {
  const headers = {};
  for (const name of auth.signed) {
    const v = req.headers[name];
    if (v === undefined) return null;
    headers[name] = v;
  }
  const signer = new aws4.RequestSigner({
    method: req.method, host: req.headers.host, path: req.url, headers,
    service: auth.service, region: auth.region, doNotModifyHeaders: true,
  }, { accessKeyId: auth.ak, secretAccessKey: secret });
  signer.datetime = req.headers['x-amz-date'];
  return signer.signature();
}

function keyOf(req) {
  const u = new URL(req.url, 'http://x');
  const parts = u.pathname.split('/').slice(1);   // path style: bucket/key
  return { bucket: decodeURIComponent(parts[0] || ''), key: parts.slice(1).map(decodeURIComponent).join('/'),
           query: u.searchParams, pathname: u.pathname };
}

function storeRequest(method, pathname, headers, body) {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port: opts.storePort, method, path: pathname, headers },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      });
    r.on('error', reject);
    if (body && body.length) r.write(body);
    r.end();
  });
}

async function keyExists(k) {
  const r = await storeRequest('HEAD', '/' + encodeURIComponent(k.bucket) + '/' +
    k.key.split('/').map(encodeURIComponent).join('/'), {}, null);
  return r.status === 200;
}

/* Per-key locks for conditional writes: S3 decides If-None-Match atomically (of concurrent
 * writers of one key, one wins and the others get 412); s3rver does not, so the front's
 * check-then-store runs under a lock per bucket/key. */
const keyLocks = new Map();

async function withKeyLock(name, fn) {
  const prev = keyLocks.get(name) || Promise.resolve();
  let release;
  const mine = new Promise((resolve) => { release = resolve; });
  const tail = prev.then(() => mine);
  keyLocks.set(name, tail);
  await prev;
  try {
    return await fn();
  } finally {
    release();
    if (keyLocks.get(name) === tail) keyLocks.delete(name);
  }
}

function control(req, res) {
  const u = new URL(req.url, 'http://x');
  const q = u.searchParams;
  let out = { ok: true };
  if (u.pathname === '/_control/fail') {
    state.fail = { count: Number(q.get('count') || 1), status: Number(q.get('status') || 503),
                   code: q.get('code') || 'SlowDown', match: q.get('match') || '' };
  } else if (u.pathname === '/_control/cut') {
    state.cut = { after: Number(q.get('after') || 0) };
  } else if (u.pathname === '/_control/nolock') {
    state.nolock = q.get('on') === '1';
  } else if (u.pathname === '/_control/reset') {
    state.fail = null; state.cut = null; state.nolock = false; state.requests = [];
  } else if (u.pathname === '/_control/requests') {
    out = state.requests;
  } else {
    res.writeHead(404); res.end(); return;
  }
  const body = JSON.stringify(out);
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

async function handle(req, res, body) {
  const h = req.headers;
  const record = { method: req.method, url: req.url, headers: h, body_length: body.length, status: 0 };
  state.requests.push(record);
  if (state.requests.length > 200) state.requests.shift();
  const answer = (status, code, message, extra) => { record.status = status; record.code = code; return s3Error(res, status, code, message, extra); };

  if (state.fail && state.fail.count > 0 && req.url.includes(state.fail.match)) {
    state.fail.count--;
    return answer(state.fail.status, state.fail.code, 'Injected by the test front');
  }
  if (h['transfer-encoding'])
    return answer(501, 'NotImplemented', 'A header you provided implies functionality that is not implemented', '<Header>Transfer-Encoding</Header>');
  if ((req.method === 'PUT' || req.method === 'POST') && h['content-length'] === undefined)
    return answer(411, 'MissingContentLength', 'You must provide the Content-Length HTTP header.');

  const auth = parseAuth(h.authorization);
  if (!auth) return answer(403, 'AccessDenied', 'Access Denied (no or malformed SigV4 Authorization)');
  const secret = opts.keys[auth.ak];
  if (secret === undefined)
    return answer(403, 'InvalidAccessKeyId', 'The AWS Access Key Id you provided does not exist in our records.');
  if (auth.region !== opts.region || auth.service !== 's3' || !auth.signed.includes('host') ||
      !auth.signed.includes('x-amz-date') || !auth.signed.includes('x-amz-content-sha256') ||
      (h['x-amz-date'] || '').slice(0, 8) !== auth.date)
    return answer(403, 'SignatureDoesNotMatch', 'Scope or signed headers are wrong');
  const skew = Math.abs(Date.parse((h['x-amz-date'] || '').replace(/^(\d{4})(\d\d)(\d\d)T(\d\d)(\d\d)(\d\d)Z$/, '$1-$2-$3T$4:$5:$6Z')) - Date.now());
  if (!(skew < 15 * 60 * 1000))
    return answer(403, 'RequestTimeTooSkewed', 'The difference between the request time and the current time is too large.');
  for (const name of Object.keys(h)) {
    if (name.startsWith('x-amz-') && !auth.signed.includes(name))
      return answer(403, 'AccessDenied', 'There were headers present in the request which were not signed: ' + name);
  }
  const expected = expectedSignature(req, auth, secret);
  if (expected !== auth.signature)
    return answer(403, 'SignatureDoesNotMatch', 'The request signature we calculated does not match the signature you provided.');

  const claimed = h['x-amz-content-sha256'];
  const sha = crypto.createHash('sha256').update(body).digest();
  if (claimed !== 'UNSIGNED-PAYLOAD' && claimed !== sha.toString('hex'))
    return answer(400, 'XAmzContentSHA256Mismatch', "The provided 'x-amz-content-sha256' header does not match what was computed.");
  if (h['x-amz-checksum-sha256'] !== undefined && h['x-amz-checksum-sha256'] !== sha.toString('base64'))
    return answer(400, 'BadDigest', 'The SHA256 you specified did not match the calculated checksum.');
  if (h['content-md5'] !== undefined && h['content-md5'] !== crypto.createHash('md5').update(body).digest('base64'))
    return answer(400, 'BadDigest', 'The Content-MD5 you specified did not match what we received.');

  const k = keyOf(req);
  const lockHeaders = ['x-amz-object-lock-mode', 'x-amz-object-lock-retain-until-date', 'x-amz-object-lock-legal-hold'];
  if (state.nolock && lockHeaders.some((n) => h[n] !== undefined))
    return answer(400, 'InvalidRequest', 'Bucket is missing Object Lock Configuration');
  if (h['x-amz-object-lock-mode'] !== undefined &&
      (!['GOVERNANCE', 'COMPLIANCE'].includes(h['x-amz-object-lock-mode']) ||
       isNaN(Date.parse(h['x-amz-object-lock-retain-until-date'] || ''))))
    return answer(400, 'InvalidArgument', 'Unknown wormMode directive or bad retain-until date.');
  const isPut = req.method === 'PUT' && !k.query.has('partNumber');
  const isComplete = req.method === 'POST' && k.query.has('uploadId');
  if (h['if-none-match'] !== undefined && (isPut || isComplete)) {
    if (h['if-none-match'] !== '*')
      return answer(501, 'NotImplemented', 'If-None-Match supports only *');
    if (k.key) {
      return withKeyLock(k.bucket + '/' + k.key, async () => {
        if (await keyExists(k))
          return answer(412, 'PreconditionFailed', 'At least one of the pre-conditions you specified did not hold', '<Condition>If-None-Match</Condition>');
        return forward(req, res, body, isPut, answer, record);
      });
    }
  }
  return forward(req, res, body, isPut, answer, record);
}

async function forward(req, res, body, isPut, answer, record) {
  const h = req.headers;
  // To the store. s3rver does not know the conditional or checksum headers: drop them.
  // The front is the authority: s3rver gets an anonymous request (it would refuse access keys
  // it does not know, and checks nothing else).
  const fwd = Object.assign({}, h);
  delete fwd['if-none-match'];
  delete fwd['authorization'];
  delete fwd['x-amz-security-token'];
  fwd['content-length'] = String(body.length);
  let r;
  try {
    r = await storeRequest(req.method, req.url, fwd, body);
  } catch (e) {
    return answer(500, 'InternalError', 'store unreachable: ' + e.message);
  }
  record.status = r.status;
  const out = Object.assign({}, r.headers);
  delete out['transfer-encoding'];
  out['content-length'] = String(r.body.length);
  if (r.status === 200 && isPut && h['x-amz-checksum-sha256'] !== undefined)
    out['x-amz-checksum-sha256'] = h['x-amz-checksum-sha256'];
  res.writeHead(r.status, out);
  res.end(r.body);
  return r.status;
}

const front = http.createServer((req, res) => {
  if (req.url.startsWith('/_control/')) {
    req.resume();
    req.on('end', () => control(req, res));
    return;
  }
  const chunks = [];
  let received = 0;
  const cut = state.cut;
  req.on('data', (c) => {
    received += c.length;
    if (cut && state.cut === cut) {
      if (received > cut.after) {
        state.cut = null;
        state.requests.push({ method: req.method, url: req.url, headers: req.headers, cut_after: received, status: 0 });
        req.socket.destroy();
        return;
      }
    }
    chunks.push(c);
  });
  req.on('end', () => {
    if (req.socket.destroyed) return;
    handle(req, res, Buffer.concat(chunks)).catch((e) => {
      try { s3Error(res, 500, 'InternalError', String(e && e.stack || e)); } catch (_) { /* gone */ }
    });
  });
});
front.keepAliveTimeout = 30000;

async function main() {
  const dir = opts.dir || fs.mkdtempSync(path.join(os.tmpdir(), 's3rver-'));
  const store = new S3rver({ address: '127.0.0.1', port: opts.storePort, silent: true, directory: dir,
                             configureBuckets: [] });
  const addr = await store.run();
  opts.storePort = addr.port;
  front.listen(opts.frontPort, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ front_port: front.address().port, store_port: opts.storePort, dir }) + '\n');
  });
  const stop = () => { front.close(); store.close().finally(() => process.exit(0)); setTimeout(() => process.exit(0), 2000).unref(); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // The launcher holds our stdin open; when it dies (even by SIGKILL), stdin ends: stop, so a
  // killed test run leaves no server behind.
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
}

main().catch((e) => { console.error(e); process.exit(1); });
