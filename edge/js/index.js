// The worker's module entry: instantiates the Rust crate (wasm-bindgen `--target web`
// glue, built by scripts/build-edge) once per isolate and moves bytes for it. It
// holds no policy: every decision is a synchronous Rust call (edge/src/plan.rs,
// edge/src/worker_entry.rs) that answers with the next step, and this file only
// performs the step with the platform's own APIs, so the common requests never enter
// Rust's async executor:
// - `F`: forward (where, which headers to remove, which to set);
// - `V`: check an Ed25519 signature with WebCrypto, then ask `planVerified`;
// - `S`: read the session with one GET from the store, then ask `planStored`;
// - a `Response`: answer it as it is;
// - `undefined`: the request takes the full path, Rust's async `fetch` (preflights,
//   CORS, refusals of the credentials, keys to fetch, the KV store, a WebCrypto
//   failure); `checkUnknown` when the store could not say.
// A Wasm trap poisons the instance: that request gets a JSON 500 and the next one a
// fresh instance (the glue's `__wbg_reset_state`), so the isolate keeps serving.
import {
  initSync,
  fetch as fullPath,
  plan,
  planVerified,
  planStored,
  checkUnknown,
  forwardFailed,
  __wbg_reset_state,
} from "./edge.js";
import module from "./edge_bg.wasm";

initSync({ module });

// Which Wasm instance is current: bumped when a trap replaced it. The numbers a
// protected request's steps carry belong to the instance that handed them out; the
// next instance counts from 0 again, so an old number must never reach it.
let instance = 0;

function internalError(error) {
  console.error("edge internal error:", error);
  if (error instanceof WebAssembly.RuntimeError) {
    __wbg_reset_state();
    instance++;
  }
  return new Response('{"error":"server_error","error_description":"internal error"}', {
    status: 500,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

function full(request, env, ctx) {
  return fullPath(request, env, ctx).catch(internalError);
}

// `F\turl\tbody\ttimeoutMs` (0: no budget of the edge's own), then the names to
// remove (tab-separated), then one "name\tvalue" line per header to set
// (ForwardPlan::encode).
function forward(request, step) {
  const lines = step.split("\n");
  const [, url, body, timeout] = lines[0].split("\t");
  const headers = new Headers(request.headers);
  for (const name of lines[1].split("\t")) if (name) headers.delete(name);
  for (let i = 2; i < lines.length; i++) {
    const tab = lines[i].indexOf("\t");
    headers.set(lines[i].slice(0, tab), lines[i].slice(tab + 1));
  }
  const init = {
    method: request.method,
    headers,
    body: body === "1" ? request.body : null,
    redirect: "manual",
  };
  // A timer on every forward is a measurable share of its CPU: only when configured.
  if (timeout !== "0") init.signal = AbortSignal.timeout(Number(timeout));
  return fetch(url, init).catch(failed);
}

// A forward that failed is answered by Rust (502, or 504 when its budget ran out); a
// trap there is handled like any other, not thrown into the runtime. Caught here, on
// the failure path, so a forward that succeeds waits on no extra promise.
function failed(error) {
  try {
    return forwardFailed(error);
  } catch (trap) {
    return internalError(trap);
  }
}

// Imported WebCrypto keys by their raw bytes (hex), never by `kid`.
const cryptoKeys = new Map();

// Lower-case hex (plan::hex) to bytes; a digit's value from its char code, without a
// substring and a parseInt per byte.
function nibble(code) {
  return code < 97 ? code - 48 : code - 87;
}
function bytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    out[i] = (nibble(hex.charCodeAt(2 * i)) << 4) | nibble(hex.charCodeAt(2 * i + 1));
  }
  return out;
}

const encoder = new TextEncoder();

// A protected request: its steps carry the number under which Rust holds what it
// learned from `plan` (its parts, token and claims), so the calls that follow pass
// that number, not the request's strings again. Called right after `plan`, so the
// number belongs to the instance current now; if a trap replaces it meanwhile, the
// request takes the full path.
async function checked(request, env, ctx, authorization, step) {
  const started = Date.now();
  const planned = instance;
  let cacheHit = true;
  if (step[0] === "V") {
    // `V\tnumber\tkeyHex\tsignatureHex`, then the signing input.
    const newline = step.indexOf("\n");
    const [, number, keyHex, signatureHex] = step.slice(0, newline).split("\t");
    let valid;
    try {
      let key = cryptoKeys.get(keyHex);
      if (key === undefined) {
        key = await crypto.subtle.importKey("raw", bytes(keyHex), "Ed25519", false, ["verify"]);
        cryptoKeys.set(keyHex, key);
      }
      valid = await crypto.subtle.verify(
        "Ed25519",
        key,
        bytes(signatureHex),
        encoder.encode(step.slice(newline + 1)),
      );
    } catch {
      // The platform failed: the full path verifies with the Wasm verifier instead.
      return full(request, env, ctx);
    }
    if (planned !== instance) return full(request, env, ctx);
    step = planVerified(env, Number(number), keyHex, valid, Date.now() - started);
    if (step === undefined) return full(request, env, ctx);
    if (typeof step !== "string") return step;
    cacheHit = false;
  }
  // `S\tnumber\turl\ttimeoutMs\tauthorization`: a GET (store::mget_url), never
  // answered from a cache on the way.
  const [, held, url, timeout, storeAuthorization] = step.split("\t");
  const readStarted = Date.now();
  let status = 0;
  let text = "";
  try {
    const reply = await fetch(url, {
      headers: { authorization: storeAuthorization },
      cache: "no-store",
      signal: AbortSignal.timeout(Number(timeout)),
    });
    status = reply.status;
    text = await reply.text();
  } catch {
    status = 0; // no answer within the budget
  }
  const storeMs = Date.now() - readStarted;
  if (planned !== instance) return full(request, env, ctx);
  const next = planStored(env, Number(held), status, text, storeMs, Date.now() - started);
  // `null`: the request is no longer held, or its claims no longer usable.
  if (next === null) return full(request, env, ctx);
  if (next === undefined) return checkUnknown(request, env, authorization, cacheHit, storeMs, started);
  if (typeof next !== "string") return next;
  return forward(request, next);
}

export default {
  fetch(request, env, ctx) {
    try {
      const headers = request.headers;
      const authorization = headers.get("authorization") ?? undefined;
      const step = plan(
        env,
        request.method,
        request.url,
        [...headers.keys()].join("\t"),
        headers.get("cf-connecting-ip") ?? undefined,
        headers.get("content-length") ?? undefined,
        authorization,
      );
      if (step === undefined) return full(request, env, ctx);
      if (step[0] === "F") return forward(request, step);
      return checked(request, env, ctx, authorization, step).catch(internalError);
    } catch (error) {
      return internalError(error);
    }
  },
};
