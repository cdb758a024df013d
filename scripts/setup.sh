#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks and builds pushdown (release).
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/pushdown/target}"

# Debian packages: clang, lld, llvm-ar and wasi-libc compile the zstd codec (C) into the
# Wasm plugins, and C plugins; python3-venv holds the DuckDB test oracle.
need_apt=()
command -v clang >/dev/null || need_apt+=(clang)
command -v wasm-ld >/dev/null || need_apt+=(lld)
command -v llvm-ar >/dev/null || need_apt+=(llvm)
[ -d /usr/include/wasm32-wasi ] || need_apt+=(wasi-libc)
# compiler-rt's wasm32 builtins: clang links them into C plugins (`pushdown plugin build`).
command -v clang >/dev/null && [ -f "$(clang -print-resource-dir)/lib/wasi/libclang_rt.builtins-wasm32.a" ] \
  || need_apt+=(libclang-rt-dev-wasm32)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
[ -x /usr/bin/time ] || need_apt+=(time)
# openssl makes the certificates of the TLS tests.
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need_apt[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The Wasm target of the plugins.
if ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "== installing the wasm32-wasip1 Rust target"
  rustup target add wasm32-wasip1
fi

# Python packages of the test oracles (DuckDB, pyarrow), in .venv.
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import duckdb, pyarrow, adbc_driver_flightsql.dbapi' 2>/dev/null; then
  echo "== installing Python packages for the test oracles"
  .venv/bin/pip install -q -r tests/oracle/requirements.txt
fi

echo "== building pushdown (release; the first build takes several minutes on 2 cores)"
cargo build --release -p pushdown-cli
