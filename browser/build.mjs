// Minifies the browser package (esbuild, as wrangler ships it) into
// target/browser/edge-auth.min.js and prints its size; fails over 5 KB gzip.
//
//   node browser/build.mjs
import { build } from "esbuild";
import { mkdirSync, readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, "target/browser/edge-auth.min.js");
mkdirSync(dirname(out), { recursive: true });
await build({
  entryPoints: [join(root, "browser/src/edge-auth.js")],
  outfile: out,
  format: "esm",
  minify: true,
  target: "es2022",
  logLevel: "warning",
});
const bytes = readFileSync(out);
const gzip = gzipSync(bytes, { level: 9 }).length;
console.log(`browser package: ${bytes.length} bytes minified, ${gzip} bytes gzip -9 (limit 5120), no runtime dependencies`);
if (gzip > 5120) process.exit(1);
