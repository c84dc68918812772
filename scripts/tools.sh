# Sourced by the project's scripts: installs the pinned tools they need, each in a
# versioned directory under ~/.cache/edge-auth/tools, and puts them on PATH.
# Nothing installed by hand is assumed; a second run reuses what is there.

TOOLS_DIR="${EDGE_AUTH_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/edge-auth/tools}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

# The version of a crate as locked in Cargo.lock.
locked_version() {
  awk -v name="$1" '$0 == "name = \"" name "\"" { getline; gsub(/version = |"/, ""); print; exit }' "$REPO_ROOT/Cargo.lock"
}

# install_crate CRATE VERSION BINARY: `cargo install` into its own versioned root.
# `--locked` is tried first; some crates lock dependency versions this machine's
# registry mirror does not serve (wasm-bindgen-cli locks a pre-release webpki-roots),
# so it falls back to a fresh resolution of the same pinned crate version. The first
# attempt's output is shown only if the fallback fails too: a step that then
# succeeds prints no error.
install_crate() {
  local crate=$1 version=$2 binary=$3 root="$TOOLS_DIR/$1-$2" first
  if [ ! -x "$root/bin/$binary" ]; then
    log "installing $crate $version (once, into $root)"
    first=$(mktemp)
    if ! cargo install --quiet --root "$root" --version "=$version" --locked "$crate" 2>"$first"; then
      if ! cargo install --quiet --root "$root" --version "=$version" "$crate"; then
        cat "$first" >&2
        rm -f "$first"
        die "could not install $crate $version"
      fi
    fi
    rm -f "$first"
  fi
  PATH="$root/bin:$PATH"
}

require_command() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

ensure_rust_targets() {
  require_command rustup "install Rust with rustup (https://rustup.rs)"
  local installed
  installed=$(rustup target list --installed)
  for target in "$@"; do
    grep -qx "$target" <<<"$installed" || rustup target add "$target" >&2
  done
}

# wasm-bindgen's CLI must equal the wasm-bindgen crate in Cargo.lock exactly.
ensure_wasm_bindgen() {
  install_crate wasm-bindgen-cli "$(locked_version wasm-bindgen)" wasm-bindgen-test-runner
}

# wasm-pack packages the JavaScript verifier (verifier/); it runs offline with the
# wasm-bindgen CLI above and npm's wasm-opt on PATH (it only warns that it could not
# check its own version).
WASM_PACK_VERSION=0.13.1
ensure_wasm_pack() {
  install_crate wasm-pack "$WASM_PACK_VERSION" wasm-pack
}

# Headless Chromium for the browser tests: Debian's package (playwright-core drives it
# through executablePath; no browser is ever downloaded by a tool).
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  log "installing chromium (Debian package, for the browser tests)"
  local apt_get=(apt-get)
  [ "$(id -u)" = 0 ] || apt_get=(sudo apt-get)
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >/dev/null 2>&1 ||
    { "${apt_get[@]}" update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq chromium >/dev/null; } ||
    die "could not install chromium: apt-get install chromium"
}

# HAProxy, the load balancer in front of several origins (scripts/scale-out):
# Debian's package. Quiet unless the install finally fails.
ensure_haproxy() {
  command -v haproxy >/dev/null 2>&1 && return 0
  log "installing haproxy (Debian package, the load balancer in front of the origins)"
  local apt_get=(apt-get)
  [ "$(id -u)" = 0 ] || apt_get=(sudo apt-get)
  DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq haproxy >/dev/null 2>&1 ||
    { "${apt_get[@]}" update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq haproxy >/dev/null; } ||
    die "could not install haproxy: apt-get install haproxy"
}

CARGO_FUZZ_VERSION=0.13.2
ensure_cargo_fuzz() {
  install_crate cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz
}

# npm packages pinned in package-lock.json (wrangler, which brings workerd; binaryen
# for wasm-opt). `npm ci` only when the lockfile changed since the last install.
ensure_npm_packages() {
  require_command npm "install Node.js 20 or later with npm"
  local stamp="$REPO_ROOT/node_modules/.package-lock.json"
  if [ ! -f "$stamp" ] || [ "$REPO_ROOT/package-lock.json" -nt "$stamp" ]; then
    log "installing npm packages (wrangler, binaryen) from package-lock.json"
    (cd "$REPO_ROOT" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  PATH="$REPO_ROOT/node_modules/.bin:$PATH"
}

# build_edge OUT [FEATURES]: the worker into OUT, with nothing downloaded from GitHub:
# cargo (release, wasm32), the wasm-bindgen CLI matching Cargo.lock (`--target web`,
# with the `__wbg_reset_state` export the entry calls after a Wasm trap), wasm-opt from
# npm's binaryen, and the module entry `edge/js/index.js`. wrangler bundles the result
# (esbuild) when it serves or deploys it. Needs the wasm target, the wasm-bindgen CLI
# and the npm packages (ensure_* above).
build_edge() {
  local out=$1 features=${2:-}
  local args=(--quiet --release --target wasm32-unknown-unknown -p edge)
  [ -n "$features" ] && args+=(--features "$features")
  (cd "$REPO_ROOT" && cargo build "${args[@]}")
  rm -rf "$out"
  mkdir -p "$out"
  printf '*\n' >"$out/.gitignore"
  wasm-bindgen --target web --experimental-reset-state-function --no-typescript \
    --out-dir "$out" --out-name edge "$TARGET_DIR/wasm32-unknown-unknown/release/edge.wasm"
  "$REPO_ROOT/node_modules/.bin/wasm-opt" -O --enable-reference-types --enable-bulk-memory \
    --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
    --enable-multivalue --enable-exception-handling \
    "$out/edge_bg.wasm" -o "$out/edge_bg.wasm"
  cp "$REPO_ROOT/edge/js/index.js" "$out/index.js"
  # The static assets the edge serves (wrangler.toml [assets]): the demo page and the
  # browser package it uses, as shipped (browser/src).
  mkdir -p "$out/assets"
  cp "$REPO_ROOT/edge/assets/"* "$REPO_ROOT/browser/src/edge-auth.js" "$out/assets/"
}
