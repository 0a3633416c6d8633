#!/usr/bin/env bash
# The last step of every wasm build: Binaryen's wasm-opt over cargo's output,
# written to the directory Envoy loads the modules from. It removes the
# proxy-wasm callbacks a module does not implement from its exports
# (filters/wasm-opt/callbacks: Envoy then never enters the VM for those
# events), then optimises with -Os, Binaryen's own inlining off.
#
#   filters/wasm-opt/optimize.sh OUT_DIR IN.wasm...
#
# OUT_DIR/<name>.wasm is rewritten only when its input's bytes, this script or
# the installed wasm-opt changed (OUT_DIR/.<name>.wasm.key records them), so a
# build whose module came out the same costs nothing (cargo relinks the
# filters after a suite build with identical bytes); two modules at a time.
#
# Why: Binaryen removes ~18 % that rustc's opt-level "s" leaves (duplicate
# functions, locals, code folding, the callbacks no filter implements):
# suite.wasm 1.79 -> 1.46 MB, jwt.wasm 0.80 -> 0.66 MB. In Envoy at
# --concurrency 2 the suite is ready ~0.2 s sooner and holds ~4 MB less;
# signature checks and the cached-token path run as fast
# (docs/performance.md, "Size").
#
# The features are exactly the ones rustc enables for wasm32-wasip1
# (`rustc --print cfg --target wasm32-wasip1`): wasm-opt may not use others.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools="${WASM_OPT_DIR:-$here/../../build/tools/binaryen}"
wasm_opt="$tools/node_modules/.bin/wasm-opt"
stamp="$tools/.stamp"

if [ $# -lt 2 ]; then
  echo "usage: $0 OUT_DIR IN.wasm..." >&2
  exit 2
fi
if [ ! -x "$wasm_opt" ] || [ ! -f "$stamp" ]; then
  echo "wasm-opt is not installed under $tools (make wasm-opt installs it)" >&2
  exit 1
fi

out_dir="$1"
shift
mkdir -p "$out_dir"

# -Os with Binaryen's own inlining off (LLVM has inlined already): measured
# in Envoy at --concurrency 2 against cargo's module (docs/performance.md):
# -Os without inlining starts faster and holds less memory; -Oz (1.38 MB)
# and -Os with inlining make fewer, larger functions, which TurboFan, compiling
# every function before a listener starts, takes longer over and keeps more
# memory for.
flags=(-Os
  --one-caller-inline-max-function-size 0
  --always-inline-max-function-size 0
  --flexible-inline-max-function-size 0
  --enable-bulk-memory --enable-bulk-memory-opt --enable-sign-ext
  --enable-nontrapping-float-to-int --enable-mutable-globals
  --enable-multivalue --enable-reference-types)

# Optional callbacks (filters/wasm-opt/callbacks says which each module
# keeps); the rest are removed from the exports, and their code with them.
optional=(request_headers request_body request_trailers response_headers
  response_body response_trailers log done
  new_connection downstream_data upstream_data downstream_connection_close
  upstream_connection_close queue_ready foreign_function grpc_close
  grpc_receive grpc_receive_initial_metadata grpc_receive_trailing_metadata)
callbacks="$here/callbacks"

# The exports to remove from module $1 (e.g. jwt.wasm), comma-separated.
removed_exports() {
  local module="${1%.wasm}" keep
  keep="$(awk -v m="$module" '$1 == m { $1 = ""; print; found = 1 } END { exit !found }' "$callbacks")" || {
    echo "filters/wasm-opt/callbacks has no line for $module" >&2
    return 1
  }
  local out=() c
  for c in "${optional[@]}"; do
    case " $keep " in *" $c "*) ;; *) out+=("proxy_on_$c") ;; esac
  done
  local IFS=,
  echo "${out[*]}"
}

# What an output depends on besides its input: this script (the flags), the
# callbacks list and the installed Binaryen (its lock file).
tool_key="$(cat "${BASH_SOURCE[0]}" "$callbacks" "$tools/package-lock.json" | sha256sum | cut -d' ' -f1)"
key_of() { echo "$(sha256sum < "$1" | cut -d' ' -f1) $tool_key"; }

stale=()
declare -A keys
for in in "$@"; do
  [ -f "$in" ] || { echo "no such module: $in" >&2; exit 1; }
  name="$(basename "$in")"
  keys[$in]="$(key_of "$in")"
  if [ ! -f "$out_dir/$name" ] || [ "$(cat "$out_dir/.$name.key" 2>/dev/null)" != "${keys[$in]}" ]; then
    stale+=("$in")
  fi
done
[ ${#stale[@]} -gt 0 ] || exit 0

one() {
  local in="$1" name out remove
  name="$(basename "$in")"
  out="$out_dir/$name"
  remove="$(removed_exports "$name")"
  rm -f "$out_dir/.$name.key"
  # Passes run in command-line order: the exports go first, so that -Os
  # removes the code only they reached.
  "$wasm_opt" ${remove:+--remove-exports="$remove"} "${flags[@]}" "$in" -o "$out.tmp"
  mv -f "$out.tmp" "$out"
  echo "${keys[$in]}" > "$out_dir/.$name.key"
  printf 'wasm-opt -Os %-20s %9d -> %9d bytes\n' "$(basename "$in")" \
    "$(stat -c %s "$in")" "$(stat -c %s "$out")"
}

pids=()
for in in "${stale[@]}"; do
  one "$in" &
  pids+=($!)
  if [ "$(jobs -rp | wc -l)" -ge 2 ]; then wait -n || true; fi
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [ "$failed" -ne 0 ]; then
  echo "wasm-opt failed (see above); $out_dir is incomplete" >&2
  exit 1
fi
