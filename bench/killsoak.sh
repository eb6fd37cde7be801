#!/usr/bin/env bash
# kill -9 soak (issue 10): real serve/send processes on two loopback TCP
# links, one SIGKILLed per transfer (at a random instant, or at a crash point
# between two steps of the durability order), restarted, resumed; every
# transfer checked for the right hash, no part file, no stale DB record, no
# committed byte lost, at most one checkpoint re-sent. See bench/killsoak.py.
#
#   bench/killsoak.sh                 # KILLS=100
#   KILLS=20 SEED=1234 bench/killsoak.sh
#
# env: KILLS (default 100), SEED (default random; printed), MIN_MB/MAX_MB
#      (file sizes, default 4/48), RATE_MB (per-link cap, default 25),
#      CARGO_TARGET_DIR (default target/crash-points: the crash-points build is
#      kept apart from the normal one), SKIP_BUILD=1, KEEP=1, BENCH_TMP,
#      OUT (summary JSON; default bench/out/killsoak.json).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/crash-points}
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --features crash-points (target dir $CARGO_TARGET_DIR)"
  (cd "$ROOT" && cargo build --locked --release --quiet -p gateway --features crash-points) || die "build failed"
fi
GW=$CARGO_TARGET_DIR/release/gateway
[ -x "$GW" ] || die "no binary at $GW"
OUT=${OUT:-$BENCH_DIR/out/killsoak.json}
setup_work gw-killsoak
seed=()
[ -n "${SEED:-}" ] && seed=(--seed "$SEED")
mkdir -p "$(dirname "$OUT")"
python3 "$BENCH_DIR/killsoak.py" --gw "$GW" --work "$WORK" --kills "${KILLS:-100}" "${seed[@]}" \
  --min-mb "${MIN_MB:-4}" --max-mb "${MAX_MB:-48}" --rate-mb "${RATE_MB:-25}" | tee "$OUT"
