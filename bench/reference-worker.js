// The JavaScript workers the edge is measured against (scripts/bench), as a team
// would write them by hand, in one module:
// - (a) `/public/*`: a pass-through, `fetch` to the upstream and nothing else;
// - (b) `/api/*`: verify the access token with `jose` (`jwtVerify`, keys imported
//   once per isolate by `createLocalJWKSet`), read what our edge reads for the
//   session with one Upstash REST call (record, user not-before, freshness marker:
//   the keys of shared/src/session.rs), refuse a missing record, forward with the
//   identity;
// - (c) `/floor/*`: the store read and forward with no checks at all: what a
//   validated request costs the platform (two subrequests) before any decision, the
//   floor under any validating worker that reads the store per request; the read is
//   our edge's GET, cheaper than (b)'s POST, so the floor stays under ours;
// - (d) `/hygiene/*`: (a) doing the job our edge's forward does on every request:
//   the client's address and `x-auth-*` headers stripped, and the signed client
//   address (an HMAC-SHA-256 proof over the same fields, by WebCrypto with the key
//   imported once per isolate) added, as the origin requires of every forward.
// Bundled with esbuild (jose is ESM in many files) by the benchmark driver.
import { createLocalJWKSet, jwtVerify } from "jose";

let keys; // per isolate
let proofKey; // per isolate
let upstreamHost; // per isolate

const encoder = new TextEncoder();

// The headers our edge does not forward from a client to a public path
// (edge/src/forward.rs, is_forwarded, `authorization` not configured to pass), besides
// the `x-auth-` and `x-forwarded-` families.
const NOT_FORWARDED = new Set([
  "host",
  "authorization",
  "forwarded",
  "x-real-ip",
  "true-client-ip",
  "x-client-ip",
  "x-cluster-client-ip",
]);

function base64url(buffer) {
  return btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replaceAll("+", "-")
    .replaceAll("/", "_")
    .replace(/=+$/, "");
}

// (d): the forward with the header hygiene and the proof our edge adds (the fields of
// shared::proof::RequestProof, an anonymous request).
async function hygienic(request, env, url) {
  proofKey ??= await crypto.subtle.importKey(
    "raw",
    encoder.encode(env.PROOF_SECRET),
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign"],
  );
  const headers = new Headers(request.headers);
  for (const name of [...request.headers.keys()]) {
    if (name.startsWith("x-auth-") || name.startsWith("x-forwarded-") || NOT_FORWARDED.has(name)) {
      headers.delete(name);
    }
  }
  upstreamHost ??= new URL(env.UPSTREAM_URL).host;
  const ip = request.headers.get("cf-connecting-ip") ?? "0.0.0.0";
  const time = String(Math.floor(Date.now() / 1000));
  const pathAndQuery = url.pathname + url.search;
  const fields = ["edge-auth request v3", upstreamHost, request.method, pathAndQuery, ip, "", "", "", time];
  const mac = await crypto.subtle.sign("HMAC", proofKey, encoder.encode(fields.join("\n")));
  headers.set("x-auth-client-ip", ip);
  headers.set("x-auth-time", time);
  headers.set("x-auth-proof", base64url(mac));
  return fetch(env.UPSTREAM_URL + pathAndQuery, { method: request.method, headers, body: request.body, redirect: "manual" });
}

// shared::session::partition: FNV-1a (32-bit) of the user id, modulo 1024.
function partitionTag(sub) {
  let hash = 0x811c9dc5;
  for (const byte of encoder.encode(sub)) {
    hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  }
  return `{p${String(hash % 1024).padStart(4, "0")}}`;
}

function unauthorized() {
  return new Response('{"error":"invalid_token"}', {
    status: 401,
    headers: { "www-authenticate": 'Bearer error="invalid_token"', "content-type": "application/json" },
  });
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname.startsWith("/public/")) {
      return fetch(env.UPSTREAM_URL + url.pathname + url.search, request);
    }
    if (url.pathname.startsWith("/hygiene/")) {
      return hygienic(request, env, url);
    }
    if (url.pathname.startsWith("/floor/")) {
      // The read as our edge makes it (edge/src/store.rs, mget_url): a GET in the
      // REST API's path style, which costs less than (b)'s POST of the command.
      const key = (name) => encodeURIComponent(`${env.KEY_PREFIX}${name}`);
      const reply = await fetch(`${env.UPSTASH_URL}/mget/${key("a")}/${key("b")}/${key("c")}`, {
        headers: { authorization: `Bearer ${env.UPSTASH_TOKEN}` },
        cache: "no-store",
        signal: AbortSignal.timeout(1000),
      });
      await reply.json();
      return fetch(env.UPSTREAM_URL + url.pathname + url.search, { method: request.method, headers: request.headers });
    }
    if (!url.pathname.startsWith("/api/")) {
      return new Response("not found", { status: 404 });
    }
    const auth = request.headers.get("authorization") || "";
    if (!auth.startsWith("Bearer ")) return unauthorized();
    keys ??= createLocalJWKSet(JSON.parse(env.JWKS));
    let payload;
    try {
      ({ payload } = await jwtVerify(auth.slice(7), keys, {
        issuer: env.ISSUER,
        audience: env.AUDIENCE,
        algorithms: ["EdDSA"],
        typ: "at+jwt",
      }));
    } catch {
      return unauthorized();
    }
    const tag = partitionTag(payload.sub);
    const reply = await fetch(env.UPSTASH_URL, {
      method: "POST",
      headers: { authorization: `Bearer ${env.UPSTASH_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify([
        "MGET",
        `${env.KEY_PREFIX}sess:${tag}:${payload.sub}:${payload.sid}`,
        `${env.KEY_PREFIX}nbf:${tag}:${payload.sub}`,
        `${env.KEY_PREFIX}fresh:${tag}`,
      ]),
      signal: AbortSignal.timeout(1000),
    });
    const { result } = await reply.json();
    if (!result || !result[0] || !result[2]) return unauthorized();
    const headers = new Headers(request.headers);
    headers.delete("authorization");
    headers.set("x-auth-user-id", payload.sub);
    headers.set("x-auth-session-id", payload.sid);
    return fetch(env.UPSTREAM_URL + url.pathname + url.search, { method: request.method, headers });
  },
};
