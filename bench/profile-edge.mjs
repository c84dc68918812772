// A CPU profile of the edge's isolate while scripts/bench loads it, for finding where
// a request's workerd CPU goes (README, Benchmarks):
//
//   BENCH_INSPECTOR=9229 BENCH_ONLY=edge scripts/bench &
//   node --experimental-websocket bench/profile-edge.mjs 9229 95 edge.cpuprofile
//
// Waits for workerd's V8 inspector on the port, samples the isolate (CDP `Profiler`)
// for the given seconds, writes the profile (open it in Chrome DevTools) and prints,
// for each busy window of at least 5 s (one wrk run: forwarding, warm, cold), the
// functions with the most self and inclusive time. Stop it before the bench ends:
// a profile whose workerd is gone is lost.
import { writeFileSync } from "node:fs";

const [port, seconds, out] = process.argv.slice(2);
if (!port || !seconds) {
  console.error("usage: node --experimental-websocket profile-edge.mjs PORT SECONDS [OUT]");
  process.exit(2);
}

let target;
for (;;) {
  try {
    [target] = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
    if (target) break;
  } catch {
    // Not up yet.
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
}
const socket = new WebSocket(target.webSocketDebuggerUrl);
await new Promise((resolve, reject) => {
  socket.onopen = resolve;
  socket.onerror = reject;
});
let lastId = 0;
const pending = new Map();
socket.onmessage = (message) => {
  const reply = JSON.parse(message.data);
  pending.get(reply.id)?.(reply);
  pending.delete(reply.id);
};
const call = (method, params = {}) =>
  new Promise((resolve) => {
    const id = ++lastId;
    pending.set(id, resolve);
    socket.send(JSON.stringify({ id, method, params }));
  });

await call("Profiler.enable");
await call("Profiler.setSamplingInterval", { interval: 100 });
await call("Profiler.start");
console.error(`profiling for ${seconds} s`);
await new Promise((resolve) => setTimeout(resolve, Number(seconds) * 1000));
const { profile } = (await call("Profiler.stop")).result;
socket.close();
if (out) writeFileSync(out, JSON.stringify(profile));

const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
const parent = new Map();
for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
const name = (id) => {
  const frame = nodes.get(id).callFrame;
  return `${frame.functionName || "(anonymous)"} ${frame.url.split("/").pop()}:${frame.lineNumber}`;
};
const idle = (id) => nodes.get(id).callFrame.functionName === "(idle)";

let time = profile.startTime;
const samples = profile.samples.map((id, i) => {
  time += profile.timeDeltas[i];
  return [Math.floor((time - profile.startTime) / 1e6), id];
});
// Seconds in which the isolate was busy at least 30 % of the time, joined into windows.
const perSecond = new Map();
for (const [second, id] of samples) {
  const [busy, all] = perSecond.get(second) ?? [0, 0];
  perSecond.set(second, [busy + (idle(id) ? 0 : 1), all + 1]);
}
const windows = [];
for (const second of [...perSecond.keys()].sort((a, b) => a - b)) {
  const [busy, all] = perSecond.get(second);
  if (busy / all < 0.3) continue;
  const last = windows.at(-1);
  if (last && second - last[1] <= 1) last[1] = second;
  else windows.push([second, second]);
}

// Where a sample's own time runs: our Rust (Wasm), the entry, the wasm-bindgen glue,
// the reference workers, the platform's native functions (fetch, Headers,
// String.split: no script), or outside JavaScript ((program): workerd's own C++ such
// as its HTTP, and V8's; (garbage collector)).
const where = (id) => {
  const { functionName, url } = nodes.get(id).callFrame;
  if (functionName.startsWith("(")) return functionName;
  if (url.startsWith("wasm:")) return "Rust (Wasm)";
  if (url === "") return "platform (native functions)";
  const file = url.split("/").pop();
  if (file === "index.js") return "entry (index.js)";
  if (file === "edge.js") return "glue (edge.js)";
  return `other JS (${file})`;
};

const top = (counts, total, n) =>
  [...counts]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([label, count]) => `${((100 * count) / total).toFixed(1).padStart(5)}%  ${label}`)
    .join("\n");
for (const [from, to] of windows) {
  if (to - from < 5) continue;
  const self = new Map();
  const byWhere = new Map();
  const inclusive = new Map();
  let total = 0;
  // The first and last seconds are partly idle: left out.
  for (const [second, id] of samples) {
    if (second <= from || second >= to || idle(id)) continue;
    total++;
    self.set(name(id), (self.get(name(id)) ?? 0) + 1);
    byWhere.set(where(id), (byWhere.get(where(id)) ?? 0) + 1);
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const label = name(at);
      if (seen.has(label)) continue;
      seen.add(label);
      inclusive.set(label, (inclusive.get(label) ?? 0) + 1);
    }
  }
  console.log(`\n== busy ${from}-${to} s (${total} samples): self time by where it runs`);
  console.log(top(byWhere, total, 10));
  console.log("-- self time");
  console.log(top(self, total, 30));
  console.log("-- inclusive time");
  console.log(top(inclusive, total, 25));
}
