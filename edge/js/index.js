// The worker's module entry: instantiates the Rust crate (wasm-bindgen `--target web`
// glue, built by scripts/build-edge) once per isolate and hands each request to it.
// It holds no policy. Rust decides everything; this file only moves bytes:
// - `forwardPlan` (synchronous) answers, for a request that needs nothing but header
//   hygiene and a proof (`/auth/*`, the JWKS, public paths), where it goes, which
//   headers to remove and which to set (edge/src/plan.rs); the entry applies that
//   plan with the platform's `fetch`, so the common forward never enters Rust's
//   async machinery;
// - everything else goes to `fetch` (edge/src/worker_entry.rs).
// A Wasm trap poisons the instance: that request gets a JSON 500 and the next one a
// fresh instance (the glue's `__wbg_reset_state`), so the isolate keeps serving.
import { initSync, fetch as handle, forwardPlan, forwardFailed, __wbg_reset_state } from "./edge.js";
import module from "./edge_bg.wasm";

initSync({ module });

function internalError(error) {
  console.error("edge internal error:", error);
  if (error instanceof WebAssembly.RuntimeError) __wbg_reset_state();
  return new Response('{"error":"server_error","error_description":"internal error"}', {
    status: 500,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}

// The plan's format is ForwardPlan::encode's: "url\tbody\ttimeoutMs", then the names
// to remove (tab-separated), then one "name\tvalue" line per header to set.
function forward(request, plan) {
  const lines = plan.split("\n");
  const [url, body, timeout] = lines[0].split("\t");
  const headers = new Headers(request.headers);
  for (const name of lines[1].split("\t")) if (name) headers.delete(name);
  for (let i = 2; i < lines.length; i++) {
    const tab = lines[i].indexOf("\t");
    headers.set(lines[i].slice(0, tab), lines[i].slice(tab + 1));
  }
  return fetch(url, {
    method: request.method,
    headers,
    body: body === "1" ? request.body : null,
    redirect: "manual",
    signal: AbortSignal.timeout(Number(timeout)),
  }).catch(forwardFailed);
}

export default {
  fetch(request, env, ctx) {
    try {
      const plan = forwardPlan(
        env,
        request.method,
        request.url,
        [...request.headers.keys()].join("\t"),
        request.headers.get("cf-connecting-ip") ?? undefined,
        request.headers.get("content-length") ?? undefined,
      );
      if (plan !== undefined) return forward(request, plan);
      return handle(request, env, ctx).catch(internalError);
    } catch (error) {
      return internalError(error);
    }
  },
};
