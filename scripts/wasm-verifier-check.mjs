// Loads the minimal wasm verifier and checks it really verifies: a token signed by
// Node's own Ed25519 (an independent implementation) is accepted, and a token with
// one changed payload character, an expired one and an `alg: none` one are refused.
// Usage: node scripts/wasm-verifier-check.mjs path/to/wasm_verifier.wasm
import { readFileSync } from "node:fs";
import { generateKeyPairSync, sign } from "node:crypto";

const wasm = await WebAssembly.instantiate(readFileSync(process.argv[2]), {});
const { memory, buffer, set_keys, verify } = wasm.instance.exports;

const write = (text) => {
  const bytes = new TextEncoder().encode(text);
  const at = buffer(); // first: it may grow memory, which detaches the old ArrayBuffer
  new Uint8Array(memory.buffer, at, bytes.length).set(bytes);
  return bytes.length;
};
const b64 = (data) => Buffer.from(data).toString("base64url");

const { publicKey, privateKey } = generateKeyPairSync("ed25519");
const x = publicKey.export({ format: "jwk" }).x;
const now = Math.floor(Date.now() / 1000);
const mint = (claims, header = { alg: "EdDSA", typ: "at+jwt", kid: "k1" }) => {
  const input = `${b64(JSON.stringify(header))}.${b64(JSON.stringify(claims))}`;
  return `${input}.${b64(sign(null, Buffer.from(input), privateKey))}`;
};
const claims = {
  iss: "https://auth.example", aud: "api", sub: "u1", sid: "s1", jti: "t1",
  iat: now, nbf: now, exp: now + 900, scope: "read",
};

const checks = [];
const expect = (name, got, want) => checks.push([name, got === want]);
expect("JWK set accepted", set_keys(write(JSON.stringify({ keys: [{ kty: "OKP", crv: "Ed25519", x, kid: "k1" }] }))), 1);
const token = mint(claims);
expect("valid token accepted", verify(write(token), BigInt(now)), 1);
const [h, p, s] = token.split(".");
const tampered = `${h}.${p.slice(0, 10)}${p[10] === "A" ? "B" : "A"}${p.slice(11)}.${s}`;
expect("tampered token refused", verify(write(tampered), BigInt(now)), 0);
expect("expired token refused", verify(write(token), BigInt(now + 3600)), 0);
expect("alg none refused", verify(write(mint(claims, { alg: "none", typ: "at+jwt", kid: "k1" })), BigInt(now)), 0);

for (const [name, ok] of checks) console.log(`${ok ? "ok  " : "FAIL"} ${name}`);
if (checks.some(([, ok]) => !ok)) process.exit(1);
