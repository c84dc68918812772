// Runs shared's own validator vectors (recorded by `cargo test -p shared --test
// validator` with SHARED_VECTORS_OUT, one JSON line each, with the Rust verdict)
// through the npm package wasm-pack built, under Node: every verdict must agree, down
// to the error code and the claim. Then the package's own contract: bad options and
// bad key sets throw a VerifyError too, a parsed JWK set works like its text, and the
// TypeScript types describe all of it.
//
//   node verifier/js/check-vectors.mjs PKG_DIR VECTORS.jsonl
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";

const [pkgDir, vectorsFile] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const { verify, verifySync } = require(resolve(pkgDir));

const vectors = readFileSync(vectorsFile, "utf8").trim().split("\n").map((l) => JSON.parse(l));
const failures = [];
const summary = {};

// The verdict of `run` (sync or async) on vector `v`, in the recorded form.
async function verdict(run, v) {
  const options = { issuer: v.issuer, audience: v.audience, now: v.now };
  try {
    const c = await run(v.token, v.jwks, options);
    return { sub: c.sub, sid: c.sid, scope: c.scope, exp: c.exp, iat: c.iat, nbf: c.nbf, jti: c.jti, iss: c.iss };
  } catch (e) {
    if (e.name !== "VerifyError") return { threw: `${e.name}: ${e.message}` };
    return { error: e.code, claim: e.claim ?? null };
  }
}

async function runAll(label, run) {
  let accepted = 0;
  const codes = new Set();
  for (const [i, v] of vectors.entries()) {
    const want = v.expected;
    const got = await verdict(run, v);
    const same = Object.keys(want).every((k) => want[k] === got[k]) && Object.keys(got).every((k) => k in want);
    if (!same) failures.push(`${label}, vector ${i}: want ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
    else if (want.error) codes.add(want.error);
    else accepted++;
  }
  summary[label] = { accepted, refused: vectors.length - accepted, codes };
}

await runAll("verify (WebCrypto)", verify);
await runAll("verifySync (Wasm)", verifySync);
// A runtime whose WebCrypto has no Ed25519 (or no crypto at all): verify falls back
// to the Wasm implementation and still agrees.
const saved = Object.getOwnPropertyDescriptor(globalThis, "crypto");
Object.defineProperty(globalThis, "crypto", { value: undefined, configurable: true });
await runAll("verify (no WebCrypto: Wasm fallback)", verify);
Object.defineProperty(globalThis, "crypto", saved);

// The package's own contract.
const valid = vectors.find((v) => !v.expected.error);
const expectThrow = async (what, code, f) => {
  for (const [label, run] of [["verify", verify], ["verifySync", verifySync]]) {
    try {
      await f(run);
      failures.push(`${label}, ${what}: did not throw`);
    } catch (e) {
      if (e.name !== "VerifyError" || e.code !== code) failures.push(`${label}, ${what}: threw ${e.name} ${e.code}: ${e.message}`);
    }
  }
};
const opts = { issuer: valid.issuer, audience: valid.audience, now: valid.now };
await expectThrow("no issuer", "options", (run) => run(valid.token, valid.jwks, { audience: valid.audience }));
await expectThrow("options not an object", "options", (run) => run(valid.token, valid.jwks, "x"));
await expectThrow("now not a number", "options", (run) => run(valid.token, valid.jwks, { ...opts, now: "soon" }));
await expectThrow("a JWK set that is not one", "key", (run) => run(valid.token, '{"keys":5}', opts));
await expectThrow("a JWK set of other key types only", "unknown_key", (run) =>
  run(valid.token, '{"keys":[{"kty":"RSA"}]}', opts));
await expectThrow("now defaults to the clock (the vectors are from 2023)", "expired", (run) =>
  run(valid.token, valid.jwks, { issuer: valid.issuer, audience: valid.audience }));
const fromObject = await verify(valid.token, JSON.parse(valid.jwks), opts);
if (fromObject.sub !== valid.expected.sub) failures.push("a parsed JWK set did not verify");
const types = readFileSync(join(pkgDir, "edge_auth_verifier.d.ts"), "utf8");
for (const name of [
  "VerifyOptions",
  "Claims",
  "VerifyError",
  "verify(token: string, jwks: string | object, options: VerifyOptions): Promise<Claims>",
  "verifySync(token: string, jwks: string | object, options: VerifyOptions): Claims",
]) {
  if (!types.includes(name)) failures.push(`the TypeScript types lack ${name}`);
}

if (failures.length) {
  console.error(`${failures.length} disagreement(s):\n${failures.slice(0, 20).join("\n")}`);
  process.exit(1);
}
const first = Object.values(summary)[0];
console.log(
  `js verifier: ${vectors.length} of shared's vectors agree with Rust under Node ${process.version}, ` +
    `${Object.keys(summary).join(", ")} alike (${first.accepted} accepted, ${first.refused} refused with the same ` +
    `code: ${[...first.codes].sort().join(", ")}); options, key-set and type checks pass`,
);
