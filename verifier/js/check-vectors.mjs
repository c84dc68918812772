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
const { verify } = require(resolve(pkgDir));

const vectors = readFileSync(vectorsFile, "utf8").trim().split("\n").map((l) => JSON.parse(l));
const failures = [];
let accepted = 0;
let refused = 0;
const codes = new Set();
for (const [i, v] of vectors.entries()) {
  const options = { issuer: v.issuer, audience: v.audience, now: v.now };
  let got;
  try {
    const claims = verify(v.token, v.jwks, options);
    got = { sub: claims.sub, sid: claims.sid, scope: claims.scope, exp: claims.exp, iat: claims.iat, nbf: claims.nbf, jti: claims.jti, iss: claims.iss };
  } catch (e) {
    if (e.name !== "VerifyError") {
      failures.push(`vector ${i}: threw ${e.name}: ${e.message}`);
      continue;
    }
    got = { error: e.code, claim: e.claim ?? null };
  }
  const want = v.expected;
  const same = Object.keys(want).every((k) => want[k] === got[k]) && Object.keys(got).every((k) => k in want);
  if (!same) failures.push(`vector ${i}: want ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
  else if (want.error) {
    refused++;
    codes.add(want.error);
  } else accepted++;
}

// The package's own contract.
const valid = vectors.find((v) => !v.expected.error);
const expectThrow = (what, code, f) => {
  try {
    f();
    failures.push(`${what}: did not throw`);
  } catch (e) {
    if (e.name !== "VerifyError" || e.code !== code) failures.push(`${what}: threw ${e.name} ${e.code}: ${e.message}`);
  }
};
const opts = { issuer: valid.issuer, audience: valid.audience, now: valid.now };
expectThrow("no issuer", "options", () => verify(valid.token, valid.jwks, { audience: valid.audience }));
expectThrow("options not an object", "options", () => verify(valid.token, valid.jwks, "x"));
expectThrow("now not a number", "options", () => verify(valid.token, valid.jwks, { ...opts, now: "soon" }));
expectThrow("a JWK set that is not one", "key", () => verify(valid.token, '{"keys":5}', opts));
expectThrow("a JWK set of other key types only", "unknown_key", () => verify(valid.token, '{"keys":[{"kty":"RSA"}]}', opts));
expectThrow("now defaults to the clock (the vectors are from 2023)", "expired", () =>
  verify(valid.token, valid.jwks, { issuer: valid.issuer, audience: valid.audience }));
const fromObject = verify(valid.token, JSON.parse(valid.jwks), opts);
if (fromObject.sub !== valid.expected.sub) failures.push("a parsed JWK set did not verify");
const types = readFileSync(join(pkgDir, "edge_auth_verifier.d.ts"), "utf8");
for (const name of ["VerifyOptions", "Claims", "VerifyError", "verify(token: string, jwks: string | object, options: VerifyOptions): Claims"]) {
  if (!types.includes(name)) failures.push(`the TypeScript types lack ${name}`);
}

if (failures.length) {
  console.error(`${failures.length} disagreement(s):\n${failures.slice(0, 20).join("\n")}`);
  process.exit(1);
}
console.log(
  `js verifier: ${vectors.length} of shared's vectors agree with Rust under Node ${process.version} ` +
    `(${accepted} accepted, ${refused} refused with the same code: ${[...codes].sort().join(", ")}); options, key-set and type checks pass`,
);
