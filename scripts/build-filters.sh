#!/usr/bin/env bash
# Builds every filter crate under filters/ (those with a cdylib) two ways:
#
# Native Envoy dynamic modules, target/filters/libmaille_<name>.so: the same crates for the
# host (Linux x86-64) with the ordinary stable toolchain, release profile (panics unwind, so
# that the module catches them at Envoy's boundary), and the crate's `dynamic-module` feature,
# which exports the hooks. `libmaille_<name>.so` is the file Envoy looks up for
# `dynamic_module_config: { name: maille_<name> }` in $ENVOY_DYNAMIC_MODULES_SEARCH_PATH;
# deploy/envoy/*-native.yaml name the file itself (`module.local.filename`). A changed module
# replaces the old file by rename, so Envoys that have the old one loaded keep running it.
#
# WebAssembly, target/filters/<name>.wasm, for wasm32-unknown-unknown, size-optimised:
#   1. cargo +debian-web with std built from source (see ../shared/toolchain.md), profile
#      `wasm` (opt-level z, LTO), std's `optimize_for_size`, panics that abort at once and
#      no Debug formatting (`{:?}` prints nothing: messages quote values themselves). The
#      filters are written so that they do not panic; these flags take ~70 KB off canary.
#   2. wasm-metadce keeps only the exports listed in filters/<name>/exports.txt;
#   3. wasm-opt -Oz, after flatten + rereloop.
# A separate target dir keeps host builds untouched.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=wasm32-unknown-unknown
WASM_TARGET_DIR=target/wasm
OUT=target/filters
LLD_DIR="$(rustc +stable --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
# The features Rust 1.96 enables for wasm32 by default; all are supported by Envoy's V8.
WASM_FEATURES=(--enable-sign-ext --enable-bulk-memory --enable-mutable-globals
  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types)
mkdir -p "$OUT"

native_pkgs=() native_features=()
for manifest in filters/*/Cargo.toml; do
  grep -q cdylib "$manifest" && grep -q '^dynamic-module = ' "$manifest" || continue
  crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
  native_pkgs+=(-p "$crate"); native_features+=("$crate/dynamic-module")
done
if [ ${#native_pkgs[@]} -gt 0 ]; then
  echo "[filters] building native modules (${native_features[*]%/dynamic-module})" >&2
  cargo build -q --release "${native_pkgs[@]}" --features "$(IFS=,; echo "${native_features[*]}")"
  for f in "${native_features[@]}"; do
    crate=${f%/dynamic-module}; lib=lib${crate//-/_}.so
    src=target/release/$lib
    if [ "$OUT/$lib" -nt "$src" ]; then
      echo "[filters] $OUT/$lib: up to date" >&2
      continue
    fi
    cp "$src" "$OUT/.$lib.tmp" && mv -f "$OUT/.$lib.tmp" "$OUT/$lib"
    echo "[filters] $OUT/$lib: $(stat -c %s "$OUT/$lib") bytes" >&2
  done
fi

for manifest in filters/*/Cargo.toml; do
  grep -q cdylib "$manifest" || continue
  dir=$(dirname "$manifest")
  crate=$(sed -n 's/^name = "\(.*\)"/\1/p' "$manifest" | head -1)
  name=${crate#maille-}
  echo "[filters] building $name ($crate)" >&2
  PATH="$LLD_DIR:$PATH" RUSTC_BOOTSTRAP=1 \
    RUSTFLAGS="-Zunstable-options -Cpanic=immediate-abort -Zfmt-debug=none -Zlocation-detail=none" \
    cargo +debian-web build -q -p "$crate" --target "$TARGET" --profile wasm \
    --target-dir "$WASM_TARGET_DIR" -Zbuild-std=std,panic_abort \
    -Zbuild-std-features=optimize_for_size
  raw="$WASM_TARGET_DIR/$TARGET/wasm/${crate//-/_}.wasm"
  # Cargo leaves an unchanged build alone; so do the (slow) post-processing steps.
  if [ "$OUT/$name.wasm" -nt "$raw" ] && [ "$OUT/$name.wasm" -nt "$0" ] \
    && { [ ! -f "$dir/exports.txt" ] || [ "$OUT/$name.wasm" -nt "$dir/exports.txt" ]; }; then
    echo "[filters] $OUT/$name.wasm: up to date" >&2
    continue
  fi
  tmp=$(mktemp -d)
  if [ -f "$dir/exports.txt" ]; then
    python3 - "$dir/exports.txt" > "$tmp/graph.json" <<'PY'
import json, sys
keep = [l.strip() for l in open(sys.argv[1]) if l.strip() and not l.startswith('#')]
graph = [{"name": "outside", "root": True, "reaches": ["export:" + k for k in keep]}]
graph += [{"name": "export:" + k, "export": k} for k in keep]
print(json.dumps(graph))
PY
    wasm-metadce "${WASM_FEATURES[@]}" --graph-file "$tmp/graph.json" "$raw" -o "$tmp/dce.wasm" >/dev/null
    raw_for_opt="$tmp/dce.wasm"
  else
    raw_for_opt="$raw"
  fi
  # flatten + rereloop restructure control flow before -Oz (as binaryen's -O4 does): -2 KB.
  wasm-opt --flatten --rereloop -Oz -Oz --converge --strip-debug --strip-producers --strip-target-features "${WASM_FEATURES[@]}" "$raw_for_opt" -o "$OUT/$name.wasm"
  rm -rf "$tmp"
  echo "[filters] $OUT/$name.wasm: $(stat -c %s "$OUT/$name.wasm") bytes" >&2
done
