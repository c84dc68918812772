// The module entry's own rules, under Node with the Rust glue replaced by a recording
// stub (`node --test edge/js/`; scripts/test runs it). The decisions themselves are
// Rust's and tested natively; what is tested here is what the entry alone does with
// the steps: which call it makes next, and with what.
import assert from "node:assert/strict";
import { register } from "node:module";
import { test } from "node:test";

// `./edge.js` (the wasm-bindgen glue) becomes the stub below; `./edge_bg.wasm` an
// empty module.
register(
  "data:text/javascript," +
    encodeURIComponent(`
      export async function resolve(specifier, context, next) {
        if (specifier === "./edge.js" && context.parentURL?.endsWith("/index.js")) {
          return { url: "stub:glue", shortCircuit: true };
        }
        if (specifier === "./edge_bg.wasm") return { url: "stub:wasm", shortCircuit: true };
        return next(specifier, context);
      }
      export async function load(url, context, next) {
        if (url === "stub:glue") {
          return {
            format: "module",
            shortCircuit: true,
            source: "export const initSync = () => {};" +
              ["fetch", "plan", "planVerified", "planStored", "checkUnknown", "forwardFailed", "__wbg_reset_state"]
                .map((name) => "export function " + (name === "fetch" ? "fullPath" : name) +
                  "(...a) { return globalThis.glue." + name + "(...a); }").join("") +
              "export { fullPath as fetch };",
          };
        }
        if (url === "stub:wasm") return { format: "module", shortCircuit: true, source: "export default null;" };
        return next(url, context);
      }
    `),
);

// What the stub glue does and what the entry called, per test.
const calls = [];
globalThis.glue = {};
function glue(overrides) {
  calls.length = 0;
  const record =
    (name, answer) =>
    (...args) => {
      calls.push([name, ...args]);
      return answer(...args);
    };
  globalThis.glue = {
    fetch: record("fullPath", async () => new Response("full path")),
    plan: record("plan", () => undefined),
    planVerified: record("planVerified", () => undefined),
    planStored: record("planStored", () => undefined),
    checkUnknown: record("checkUnknown", async () => new Response("checked")),
    forwardFailed: record("forwardFailed", () => new Response("failed", { status: 502 })),
    __wbg_reset_state: record("reset", () => {}),
    ...Object.fromEntries(Object.entries(overrides).map(([name, f]) => [name, record(name, f)])),
  };
}

const { default: entry } = await import(new URL("./index.js", import.meta.url));

const STORE = "https://store.test/mget/a/b/c";
const protectedRequest = () =>
  new Request("https://edge.test/api/me", { headers: { authorization: "Bearer t" } });

test("the session read's answer goes back under the number the step carried", async () => {
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init) => {
    assert.equal(String(url), STORE);
    // A GET with the store's token that no cache on the way may answer.
    const read = new Request(url, init);
    assert.equal(read.method, "GET");
    assert.equal(read.cache, "no-store");
    assert.equal(read.headers.get("authorization"), "Bearer store");
    assert.equal(read.body, null);
    return new Response('[{"result":null}]');
  };
  try {
    glue({
      plan: () => `S\t41\t${STORE}\t1000\tBearer store`,
      planStored: () => new Response("refused", { status: 401 }),
    });
    const response = await entry.fetch(protectedRequest(), {}, {});
    assert.equal(response.status, 401);
    const stored = calls.find(([name]) => name === "planStored");
    assert.deepEqual(stored.slice(2, 5), [41, 200, '[{"result":null}]']);
  } finally {
    globalThis.fetch = realFetch;
  }
});

test("a request no longer held takes the full path, not the origin's check", async () => {
  const realFetch = globalThis.fetch;
  globalThis.fetch = async () => new Response("[]");
  try {
    glue({
      plan: () => `S\t9\t${STORE}\t1000\tBearer store`,
      planStored: () => null,
    });
    const response = await entry.fetch(protectedRequest(), {}, {});
    assert.equal(await response.text(), "full path");
    assert.ok(!calls.some(([name]) => name === "checkUnknown"));
  } finally {
    globalThis.fetch = realFetch;
  }
});

test("a number handed out before a trap replaced the instance never reaches the new one", async () => {
  const realFetch = globalThis.fetch;
  let answerStore;
  globalThis.fetch = (url) => {
    assert.equal(String(url), STORE);
    return new Promise((resolve) => {
      answerStore = () => resolve(new Response("[]"));
    });
  };
  try {
    let first = true;
    glue({
      plan: () => {
        if (first) {
          first = false;
          return `S\t0\t${STORE}\t1000\tBearer store`;
        }
        throw new WebAssembly.RuntimeError("unreachable");
      },
      planStored: () => new Response("forwarded as someone else"),
    });
    // The first request waits on the store with number 0 of the old instance.
    const waiting = entry.fetch(protectedRequest(), {}, {});
    // Another request traps: the instance is replaced, and would count from 0 again.
    const trapped = await entry.fetch(protectedRequest(), {}, {});
    assert.equal(trapped.status, 500);
    assert.ok(calls.some(([name]) => name === "reset"));
    answerStore();
    const response = await waiting;
    assert.equal(await response.text(), "full path");
    assert.ok(!calls.some(([name]) => name === "planStored"), "old number passed to the new instance");
  } finally {
    globalThis.fetch = realFetch;
  }
});

test("nor does one waiting on WebCrypto's signature check", async () => {
  // A key pair of the platform's own, so the entry's WebCrypto check really runs.
  const pair = await crypto.subtle.generateKey("Ed25519", true, ["sign", "verify"]);
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  const message = "header.payload";
  const signature = new Uint8Array(await crypto.subtle.sign("Ed25519", pair.privateKey, new TextEncoder().encode(message)));
  const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  let first = true;
  glue({
    plan: () => {
      if (first) {
        first = false;
        return `V\t3\t${hex(raw)}\t${hex(signature)}\n${message}`;
      }
      throw new WebAssembly.RuntimeError("unreachable");
    },
    planVerified: () => `S\t4\t${STORE}\t1000\tBearer store`,
  });
  // The first request's check is in flight when the second one traps.
  const waiting = entry.fetch(protectedRequest(), {}, {});
  const trapped = await entry.fetch(protectedRequest(), {}, {});
  assert.equal(trapped.status, 500);
  const response = await waiting;
  assert.equal(await response.text(), "full path");
  assert.ok(!calls.some(([name]) => name === "planVerified"), "old number passed to the new instance");
});

test("a trap while answering a failed forward is a JSON 500 and replaces the instance", async () => {
  const realFetch = globalThis.fetch;
  globalThis.fetch = async () => {
    throw new TypeError("Network connection lost.");
  };
  try {
    glue({
      plan: () => "F\thttps://upstream.test/public/x\t0\t0\n",
      forwardFailed: () => {
        throw new WebAssembly.RuntimeError("unreachable");
      },
    });
    const response = await entry.fetch(new Request("https://edge.test/public/x"), {}, {});
    assert.equal(response.status, 500);
    assert.equal((await response.json()).error, "server_error");
    assert.ok(calls.some(([name]) => name === "reset"), "the trapped instance was kept");
  } finally {
    globalThis.fetch = realFetch;
  }
});
