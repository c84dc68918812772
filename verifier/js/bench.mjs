// Verify rate of the npm package wasm-pack built from `shared` next to jose's
// jwtVerify (keys imported once: createLocalJWKSet) in one Node process, on the same
// token, JWK set and checks (issuer, audience, typ at+jwt, times), three alternating
// rounds each; and the package's size.
//
//   node verifier/js/bench.mjs PKG_DIR VECTORS.jsonl [SECONDS_PER_ROUND]
import { createRequire } from "node:module";
import { readFileSync, readdirSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { join, resolve } from "node:path";
import { createLocalJWKSet, jwtVerify } from "jose";

const [pkgDir, vectorsFile, secondsArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 2);
const require = createRequire(import.meta.url);
const { verify, verifySync } = require(resolve(pkgDir));

const vector = readFileSync(vectorsFile, "utf8").trim().split("\n").map((l) => JSON.parse(l)).find((v) => !v.expected.error);
const { token, issuer, audience, now } = vector;
const jwks = vector.jwks;
const localSet = createLocalJWKSet(JSON.parse(jwks));
const currentDate = new Date(now * 1000);

// Both must accept the token before anything is timed.
const ours = await verify(token, jwks, { issuer, audience, now });
const theirs = (await jwtVerify(token, localSet, { issuer, audience, typ: "at+jwt", currentDate })).payload;
if (ours.sub !== theirs.sub) throw new Error("the two verifiers disagree");

async function rate(run) {
  const deadline = performance.now() + seconds * 1000;
  let n = 0;
  while (performance.now() < deadline) {
    for (let i = 0; i < 100; i++) await run();
    n += 100;
  }
  return n / seconds;
}
const runs = {
  ours: () => verify(token, jwks, { issuer, audience, now }),
  sync: () => verifySync(token, jwks, { issuer, audience, now }),
  jose: () => jwtVerify(token, localSet, { issuer, audience, typ: "at+jwt", currentDate }),
};
const rounds = { ours: [], sync: [], jose: [] };
for (const run of Object.values(runs)) await rate(run); // warm-up
for (let round = 0; round < 3; round++) {
  for (const [name, run] of Object.entries(runs)) rounds[name].push(await rate(run));
}
const median = (xs) => [...xs].sort((a, b) => a - b)[1];
const fmt = (x) => Math.round(x).toLocaleString("en-US");

const files = readdirSync(pkgDir).filter((f) => /\.(wasm|js)$/.test(f));
const size = (f) => {
  const bytes = readFileSync(join(pkgDir, f));
  return `${f} ${statSync(join(pkgDir, f)).size.toLocaleString("en-US")} B (${gzipSync(bytes, { level: 9 }).length.toLocaleString("en-US")} B gzip)`;
};
console.log(`js verifier under Node ${process.version}, ${seconds} s rounds, median of 3:`);
const row = (label, name) =>
  console.log(`  ${label.padEnd(48)} ${fmt(median(rounds[name])).padStart(7)} verifies/s  [${rounds[name].map(fmt).join(", ")}]`);
row("edge-auth-verifier verify (WebCrypto Ed25519)", "ours");
row("edge-auth-verifier verifySync (Ed25519 in Wasm)", "sync");
row(`jose ${require("jose/package.json").version} jwtVerify (createLocalJWKSet)`, "jose");
console.log(`  verify ÷ jose: ${(median(rounds.ours) / median(rounds.jose)).toFixed(2)}×; verifySync ÷ jose: ${(median(rounds.sync) / median(rounds.jose)).toFixed(2)}×`);
console.log(`  package size: ${files.map(size).join("; ")}`);
