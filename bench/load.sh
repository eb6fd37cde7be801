#!/usr/bin/env bash
# Load: one `gateway serve` takes N concurrent senders (separate processes,
# separate state dirs, one loopback TCP link each). Every file must land
# exact; prints serve's peak RSS (sampled VmRSS, and VmHWM at the end) and
# the slowest sender's time against the median.
#
#   bench/load.sh              # N=100 SIZE=8M
#   N=20 SIZE=64M bench/load.sh
#
# env: N (senders, default 100), SIZE (per sender, default 8M), INTERVAL
#      (RSS sampling, s; 0.2), MAX_OPEN (serve.max_open_transfers for this
#      serve; default the config's, 64), SKIP_BUILD=1, KEEP=1, BENCH_TMP,
#      OUT (JSON; default bench/out/load.json).
# Senders past the cap are told Busy and wait their turn; the count of those
# answers (from serve's log) is printed as "busy".
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

N=${N:-100}
SIZE=${SIZE:-8M}
INTERVAL=${INTERVAL:-0.2}
OUT=${OUT:-$BENCH_DIR/out/load.json}
BYTES=$(size_bytes "$SIZE")

build_gateway
setup_work gw-load
need_space $((2 * N * BYTES + 64 * 1048576)) "$WORK"

vm_kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status" 2> /dev/null || true; }

mkdir -p "$WORK/recv" "$WORK/src"
RID=$("$GW" -q --state "$WORK/state-recv" id)
PORT=$(free_port)
# --trust any: the receiver takes files from any key (a lab setting; each
# sender still runs the Noise handshake and pins the receiver's key).
# Not -q: its warnings ("refused: the receiver is busy") are counted below.
GATEWAY_SERVE_MAX_OPEN_TRANSFERS=${MAX_OPEN:-${GATEWAY_SERVE_MAX_OPEN_TRANSFERS:-64}} \
  bg_start "$GW" --state "$WORK/state-recv" --trust any serve --dir "$WORK/recv" \
  --listen "tcp:127.0.0.1:$PORT" --no-mdns > "$WORK/serve.log" 2>&1
SERVE=$BG_LAST
wait_listen "$PORT" || die "serve did not listen (see $WORK/serve.log)"
IDLE_KIB=$(vm_kib "$SERVE" VmRSS)

log "making $N files of $SIZE and $N sender states"
for i in $(seq 1 "$N"); do
  head -c "$BYTES" /dev/urandom > "$WORK/src/f$i.bin"
  "$GW" -q --state "$WORK/s$i" trust "$RID" > /dev/null
done

log "starting $N senders at once"
pids=()
t0=$(now)
for i in $(seq 1 "$N"); do
  (
    s=$(now)
    rc=0
    "$GW" -q --state "$WORK/s$i" send "$WORK/src/f$i.bin" --to "tcp:127.0.0.1:$PORT" --json \
      > "$WORK/send$i.out" 2> "$WORK/send$i.err" || rc=$?
    echo "$i $rc $(secs "$s" "$(now)")" > "$WORK/time$i"
  ) &
  pids+=("$!")
done
peak=0
while :; do
  alive=0
  for p in "${pids[@]}"; do kill -0 "$p" 2> /dev/null && alive=$((alive + 1)); done
  r=$(vm_kib "$SERVE" VmRSS)
  [ -n "$r" ] && [ "$r" -gt "$peak" ] && peak=$r
  [ "$alive" = 0 ] && break
  awk -v t0="$t0" -v t="$(now)" 'BEGIN{exit !(t - t0 > 1800)}' && die "senders still running after 30 min"
  sleep "$INTERVAL"
done
for p in "${pids[@]}"; do wait "$p" || true; done
WALL=$(secs "$t0" "$(now)")
HWM=$(vm_kib "$SERVE" VmHWM)

bad=0
for i in $(seq 1 "$N"); do
  read -r _ rc _ < "$WORK/time$i"
  if [ "$rc" != 0 ]; then
    log "sender $i failed (rc $rc): $(tail -n 2 "$WORK/send$i.err" | tr '\n' ' ')"
    bad=$((bad + 1))
    continue
  fi
  if [ "$(file_hash "$WORK/recv/f$i.bin" 2> /dev/null)" != "$(file_hash "$WORK/src/f$i.bin")" ]; then
    log "f$i.bin landed wrong or not at all"
    bad=$((bad + 1))
  fi
done
parts=$(find "$WORK/recv" -name '*.gateway-part' | wc -l)
left=$("$GW" -q --state "$WORK/state-recv" transfers --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
busy=$(grep -c 'the receiver is busy' "$WORK/serve.log" || true)
times=$(cat "$WORK"/time* | awk '{print $3}')
MED=$(echo "$times" | median)
MAX=$(echo "$times" | sort -g | tail -n 1)
mkdir -p "$(dirname "$OUT")"
cat > "$OUT" << EOF
{"senders":$N,"size_bytes":$BYTES,"max_open_transfers":${MAX_OPEN:-${GATEWAY_SERVE_MAX_OPEN_TRANSFERS:-64}},"busy_answers":$busy,"wrong_or_failed":$bad,"part_files_left":$parts,"records_left":$left,
 "wall_s":$WALL,"median_s":$MED,"slowest_s":$MAX,
 "slowest_over_median":$(awk -v a="$MAX" -v b="$MED" 'BEGIN{printf "%.2f", a/b}'),
 "serve_rss_idle_kib":$IDLE_KIB,"serve_rss_peak_sampled_kib":$peak,"serve_vmhwm_kib":$HWM,
 "rev":"$(git_rev)","dirty":$(git_dirty)}
EOF
cat "$OUT"
printf '%s senders x %s (cap %s open, %s busy answers): %s wrong/failed, %s part files, %s records left; wall %s s, median %s s, slowest %s s; serve RSS idle %s MiB, peak %s MiB (VmHWM %s MiB)\n' \
  "$N" "$SIZE" "${MAX_OPEN:-${GATEWAY_SERVE_MAX_OPEN_TRANSFERS:-64}}" "$busy" "$bad" "$parts" "$left" "$WALL" "$MED" "$MAX" \
  "$((IDLE_KIB / 1024))" "$((peak / 1024))" "$((HWM / 1024))"
[ "$bad" = 0 ] && [ "$parts" = 0 ] && [ "$left" = 0 ]
