// server.mjs - the OAuth2 authorization server of lmtpgw's integration tests.
//
// oauth2-mock-server (npm, pinned in package-lock.json) issues and signs the tokens (RS256
// JWTs, its JWKS, its token endpoint for client_credentials and refresh_token). The mock checks
// no client and no refresh token and has no JWT-bearer grant, so this front adds what a real
// authorization server does before it answers, with independent code (Node's crypto through
// `jose`, the JOSE library the mock itself depends on):
//   - client authentication (client_secret_basic or client_secret_post) against the config,
//     or certificate credentials (a client assertion: RS256 signature checked with the
//     registered certificate's public key, x5t thumbprint, iss/sub/aud/exp/jti);
//   - refresh tokens: only those in the config, or issued here, not revoked;
//   - the JWT-bearer grant (RFC 7523; Google's service accounts): the assertion's RS256
//     signature checked with the service account's public key, iss, aud, exp, sub, scope; the
//     token is then issued by the mock as for client_credentials, for the subject;
//   - introspection (RFC 7662) for Dovecot's oauth2 passdb: signature, expiry and revocation
//     checked; /introspect answers for delegated tokens (username = the subject's address),
//     /introspect/app for app-only tokens (client_credentials with IMAP.AccessAsApp), whose
//     username is "app@<domain>" of the domain the app was granted (Dovecot compares domains).
//   - test controls under /_test/: counters (and the last tokens issued), fault modes (down: 503, refuse: 400
//     invalid_client, hang), token lifetime, a delay per token request, revocation of every
//     token issued so far (revoke) or of every token as it is issued (revoke_new); subjects
//     refused with 400 invalid_grant (refuse_subjects: as Google answers a JWT-bearer
//     assertion whose sub is no mailbox of the domain, or a suspended one).
//
// Usage: node server.mjs --port N --cert server.crt --key server.key --config config.json
// Prints "listening N" on stdout once ready. Loopback only.
import { readFileSync } from "node:fs";
import { createServer } from "node:https";
import { randomUUID, X509Certificate } from "node:crypto";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";
import { jwtVerify, importSPKI, importX509, decodeProtectedHeader, createLocalJWKSet } from "jose";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
const config = JSON.parse(readFileSync(args.config, "utf8"));
const port = Number(args.port);
const base = `https://127.0.0.1:${port}`;

const state = {
  mode: "ok",                 // ok | down | refuse | hang
  lifetime: config.lifetime ?? 3600,
  delayMs: 0,
  counts: {},                 // grant -> {ok, failed}
  introspections: 0,
  assertions: 0,              // client assertions verified (certificate credentials)
  refreshTokens: new Map(Object.entries(config.refresh_tokens ?? {})),
  issued: new Set(),          // jti of every access token issued
  revoked: new Set(),
  tokens: [],                 // the last 100 access tokens issued (tests: never in a log)
  revokeNew: false,           // every token is revoked as it is issued (a server refusing all)
  rotateRefresh: false,       // a refresh token is revoked once it has been used (rotation)
  refreshIssued: [],          // the last 100 refresh tokens issued (tests: never in a log)
  refuseSubjects: new Set(),  // jwt_bearer subjects answered 400 invalid_grant
};

const issuer = new OAuth2Issuer();
issuer.url = base;
await issuer.keys.generate("RS256");
const service = new OAuth2Service(issuer);

function count(grant, result) {
  state.counts[grant] ??= { ok: 0, failed: 0 };
  state.counts[grant][result] += 1;
}

// Claims of the token being built: set by the front for the request, applied here.
service.on("beforeTokenSigning", (token, req) => {
  const claims = req.lmtpgw ?? {};
  const now = Math.floor(Date.now() / 1000);
  token.payload.exp = now + state.lifetime;
  token.payload.jti = randomUUID();
  Object.assign(token.payload, claims);
  state.issued.add(token.payload.jti);
  if (state.revokeNew) state.revoked.add(token.payload.jti);
});
service.on("beforeResponse", (response, req) => {
  if (response.statusCode === 200) {
    response.body.expires_in = state.lifetime;
    state.tokens.push(response.body.access_token);
    if (state.tokens.length > 100) state.tokens.shift();
    const rt = response.body.refresh_token;
    if (rt !== undefined) {
      if (req.lmtpgw?.refreshUser !== undefined) {
        state.refreshTokens.set(rt, { client_id: req.lmtpgw.clientId, user: req.lmtpgw.refreshUser });
        state.refreshIssued.push(rt);
        if (state.refreshIssued.length > 100) state.refreshIssued.shift();
        // rotation as Microsoft's identity platform may do it: the used token is gone
        if (state.rotateRefresh) state.refreshTokens.delete(req.lmtpgw.usedRefreshToken);
      } else
        delete response.body.refresh_token;
    }
    delete response.body.id_token;
  }
  count(req.lmtpgwGrant, response.statusCode === 200 ? "ok" : "failed");
});

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function send(res, status, body) {
  res.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  res.end(JSON.stringify(body));
}

const CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const seenAssertions = new Set();  // jti of every client assertion taken (a replay is refused)

// Certificate credentials (RFC 7523 2.2 as Microsoft's identity platform takes them): the
// client assertion's x5t must be the SHA-1 thumbprint of the certificate registered for the
// client, its RS256 signature verify with that certificate's public key, iss = sub = the
// client, aud = this token endpoint, exp at most 10 minutes ahead, jti never seen before.
async function assertionClient(body) {
  const id = body.client_id;
  const pem = config.certificate_clients?.[id];
  if (id === undefined || pem === undefined) return null;
  try {
    const header = decodeProtectedHeader(body.client_assertion ?? "");
    const x5t = Buffer.from(new X509Certificate(pem).fingerprint.replace(/:/g, ""), "hex").toString("base64url");
    if (header.alg !== "RS256" || header.x5t !== x5t) throw new Error("unknown certificate (x5t)");
    const key = await importX509(pem, "RS256");
    const { payload } = await jwtVerify(body.client_assertion, key, {
      algorithms: ["RS256"], issuer: id, subject: id, audience: `${base}/token`,
      requiredClaims: ["exp", "jti"],
    });
    if (payload.exp - Date.now() / 1000 > 600) throw new Error("assertion valid too long");
    if (seenAssertions.has(payload.jti)) throw new Error("assertion replayed");
    seenAssertions.add(payload.jti);
    state.assertions += 1;
    return id;
  } catch (e) {
    console.error(`client assertion refused: ${e.message}`);
    return null;
  }
}

// The client of the request, authenticated, or null (RFC 6749 2.3.1, RFC 7521 4.2).
async function clientOf(req, body) {
  if (body.client_assertion_type !== undefined) {
    if (body.client_assertion_type !== CLIENT_ASSERTION_TYPE || body.client_secret !== undefined) return null;
    return assertionClient(body);
  }
  let id, secret;
  const auth = req.headers.authorization ?? "";
  if (auth.startsWith("Basic ")) {
    const text = Buffer.from(auth.slice(6), "base64").toString("utf8");
    const colon = text.indexOf(":");
    if (colon < 0) return null;
    id = decodeURIComponent(text.slice(0, colon));
    secret = decodeURIComponent(text.slice(colon + 1));
  } else {
    id = body.client_id;
    secret = body.client_secret;
  }
  if (id === undefined || config.clients?.[id] === undefined || config.clients[id] !== secret) return null;
  return id;
}

async function tokenRequest(req, res) {
  const body = Object.fromEntries(new URLSearchParams(await readBody(req)));
  const grant = body.grant_type ?? "none";
  req.lmtpgwGrant = grant;
  if (state.delayMs > 0) await new Promise((r) => setTimeout(r, state.delayMs));
  if (state.mode === "hang") return;                       // never answers
  if (state.mode === "down") { count(grant, "failed"); return send(res, 503, { error: "temporarily_unavailable" }); }
  if (state.mode === "refuse") { count(grant, "failed"); return send(res, 400, { error: "invalid_client" }); }
  const refuse = (error, why) => { count(grant, "failed"); send(res, 400, { error, error_description: why }); };

  if (grant === "client_credentials") {
    const client = await clientOf(req, body);
    if (client === null) return refuse("invalid_client", "client authentication failed");
    req.lmtpgw = { appid: client, roles: ["IMAP.AccessAsApp"], kind: "app" };
    req.body = { grant_type: "client_credentials", scope: body.scope };
  } else if (grant === "refresh_token") {
    const client = await clientOf(req, body);
    if (client === null) return refuse("invalid_client", "client authentication failed");
    const rt = state.refreshTokens.get(body.refresh_token ?? "");
    if (rt === undefined || rt.client_id !== client) return refuse("invalid_grant", "unknown refresh token");
    req.lmtpgw = { sub: rt.user, email: rt.user, kind: "delegated", clientId: client, refreshUser: rt.user,
                   usedRefreshToken: body.refresh_token };
    req.body = { grant_type: "refresh_token", refresh_token: body.refresh_token, scope: body.scope };
  } else if (grant === "urn:ietf:params:oauth:grant-type:jwt-bearer") {
    let claims;
    try {
      const header = JSON.parse(Buffer.from((body.assertion ?? "").split(".")[0], "base64url").toString());
      const iss = JSON.parse(Buffer.from((body.assertion ?? "").split(".")[1], "base64url").toString()).iss;
      const account = config.service_accounts?.[iss];
      if (account === undefined || header.alg !== "RS256") throw new Error("unknown service account");
      if (account.key_id !== undefined && header.kid !== account.key_id) throw new Error("wrong kid");
      const key = await importSPKI(account.public_key, "RS256");
      ({ payload: claims } = await jwtVerify(body.assertion, key, {
        algorithms: ["RS256"], issuer: iss, audience: `${base}/token`, maxTokenAge: "1h", requiredClaims: ["exp", "iat"],
      }));
    } catch (e) {
      return refuse("invalid_grant", `assertion refused: ${e.message}`);
    }
    if (typeof claims.sub !== "string" || typeof claims.scope !== "string")
      return refuse("invalid_grant", "assertion needs sub and scope");
    if (state.refuseSubjects.has(claims.sub)) return refuse("invalid_grant", "Invalid email or User ID");
    req.lmtpgw = { sub: claims.sub, email: claims.sub, azp: claims.iss, kind: "delegated" };
    // Issued by the mock like an app token, for the subject (claims set in beforeTokenSigning).
    req.body = { grant_type: "client_credentials", scope: claims.scope };
  } else {
    return refuse("unsupported_grant_type", grant);
  }
  for (const k of Object.keys(req.body)) if (req.body[k] === undefined) delete req.body[k];
  service.requestHandler(req, res);
}

async function introspect(req, res, app) {
  state.introspections += 1;
  const body = Object.fromEntries(new URLSearchParams(await readBody(req)));
  const jwks = createLocalJWKSet({ keys: issuer.keys.toJSON() });
  let claims;
  try {
    ({ payload: claims } = await jwtVerify(body.token ?? "", jwks, { issuer: base }));
  } catch (e) {
    return send(res, 200, { active: false });
  }
  if (state.revoked.has(claims.jti)) return send(res, 200, { active: false });
  if (app) {
    const domain = config.app_domains?.[claims.appid];
    if (claims.kind !== "app" || domain === undefined || !(claims.roles ?? []).includes("IMAP.AccessAsApp"))
      return send(res, 200, { active: false });
    return send(res, 200, { active: true, username: `app@${domain}`, exp: claims.exp });
  }
  if (claims.kind !== "delegated") return send(res, 200, { active: true, username: `${claims.appid}@app.invalid` });
  return send(res, 200, { active: true, username: claims.email, exp: claims.exp });
}

async function control(req, res, path) {
  if (path === "/_test/stats") {
    return send(res, 200, { token: state.counts, introspections: state.introspections, tokens: state.tokens,
                            refresh_tokens: state.refreshIssued, assertions: state.assertions });
  }
  if (path === "/_test/set" && req.method === "POST") {
    const body = JSON.parse((await readBody(req)) || "{}");
    if (body.mode !== undefined) state.mode = body.mode;
    if (body.lifetime !== undefined) state.lifetime = body.lifetime;
    if (body.delay_ms !== undefined) state.delayMs = body.delay_ms;
    if (body.revoke_new !== undefined) state.revokeNew = body.revoke_new;
    if (body.rotate_refresh !== undefined) state.rotateRefresh = body.rotate_refresh;
    if (body.refuse_subjects !== undefined) state.refuseSubjects = new Set(body.refuse_subjects);
    return send(res, 200, { ok: true });
  }
  if (path === "/_test/revoke" && req.method === "POST") {
    for (const jti of state.issued) state.revoked.add(jti);
    return send(res, 200, { revoked: state.revoked.size });
  }
  if (path === "/_test/reset" && req.method === "POST") {
    state.counts = {};
    state.introspections = 0;
    return send(res, 200, { ok: true });
  }
  return send(res, 404, { error: "not found" });
}

const server = createServer({ key: readFileSync(args.key), cert: readFileSync(args.cert) }, (req, res) => {
  const path = new URL(req.url, base).pathname;
  let work;
  if (path === "/token" && req.method === "POST") work = tokenRequest(req, res);
  else if (path === "/introspect" && req.method === "POST") work = introspect(req, res, false);
  else if (path === "/introspect/app" && req.method === "POST") work = introspect(req, res, true);
  else if (path.startsWith("/_test/")) work = control(req, res, path);
  else { service.requestHandler(req, res); return; }
  work.catch((e) => { console.error(e); send(res, 500, { error: "server_error" }); });
});
server.listen(port, "127.0.0.1", () => { process.stdout.write(`listening ${port}\n`); });
