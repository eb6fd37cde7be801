#!/usr/bin/env bash
# Peak resident memory (VmHWM) of `gateway serve` and `gateway send` for one
# SIZE transfer over 2 loopback TCP links.
#
#   bench/rss.sh              # SIZE=4G
#   SIZE=1G bench/rss.sh
#
# env: SIZE (default 4G), BENCH_TMP, CARGO_TARGET_DIR, SKIP_BUILD=1, KEEP=1,
#      OUT (results JSON; default bench/out/rss.json), INTERVAL (RSS sampling, s; 0.1).
# send's peak comes from `/usr/bin/time -v` (max RSS) when it is installed, and from
# /proc/PID/status VmHWM sampled every INTERVAL otherwise; serve's peak is its
# VmHWM read after send has exited (serve is still alive then, so it is exact).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

SIZE=${SIZE:-4G}
INTERVAL=${INTERVAL:-0.1}
OUT=${OUT:-$BENCH_DIR/out/rss.json}
BYTES=$(size_bytes "$SIZE")

build_gateway
setup_work gw-rss
need_space $((2 * BYTES + 64 * 1048576)) "$WORK"

SRC=$WORK/src.bin
log "generating $SIZE ($BYTES bytes) in $SRC"
make_file "$SRC" "$BYTES"
SRC_SHA=$(file_hash "$SRC")

vm_kib() { awk -v k="$2" '$1==k":" {print $2}' "/proc/$1/status" 2>/dev/null || true; }

P1=$(free_port); P2=$(free_port)
while [ "$P2" = "$P1" ]; do P2=$(free_port); done
mkdir -p "$WORK/recv"
trust_pair "$GW" "$WORK/state-recv" "$WORK/state-send"
bg_start "$GW" -q --state "$WORK/state-recv" serve --dir "$WORK/recv" \
  --listen "tcp:127.0.0.1:$P1" --listen "tcp:127.0.0.1:$P2" > "$WORK/serve.log" 2>&1
SERVE=$BG_LAST
if ! wait_listen "$P1" || ! wait_listen "$P2"; then die "serve did not listen (see $WORK/serve.log)"; fi
SERVE_IDLE_KIB=$(vm_kib "$SERVE" VmRSS)

SEND_CMD=("$GW" -q --state "$WORK/state-send" send "$SRC" --to "tcp:127.0.0.1:$P1" --to "tcp:127.0.0.1:$P2" --json)
TIMEV=""
if [ -x /usr/bin/time ] && /usr/bin/time -v true 2>/dev/null; then TIMEV=/usr/bin/time; fi
log "sending $SIZE over 2 links ($GW @ $(git_rev), dirty=$(git_dirty)); send peak via $([ -n "$TIMEV" ] && echo "/usr/bin/time -v" || echo "VmHWM polling")"
t0=$(now)
if [ -n "$TIMEV" ]; then
  bg_start "$TIMEV" -v -o "$WORK/send.timev" "${SEND_CMD[@]}"
else
  bg_start "${SEND_CMD[@]}"
fi > "$WORK/send.out" 2> "$WORK/send.err"
SENDER=$BG_LAST

# sample both processes: time, serve VmRSS, send VmRSS (KiB) -> samples.tsv
SEND_PID=""
SEND_HWM_POLL=0
: > "$WORK/samples.tsv"
while kill -0 "$SENDER" 2>/dev/null; do
  if [ -z "$SEND_PID" ]; then
    if [ -n "$TIMEV" ]; then SEND_PID=$(pgrep -P "$SENDER" -x gateway || true); else SEND_PID=$SENDER; fi
  fi
  s_rss=$(vm_kib "$SERVE" VmRSS); c_rss=""
  if [ -n "$SEND_PID" ]; then
    c_rss=$(vm_kib "$SEND_PID" VmRSS)
    h=$(vm_kib "$SEND_PID" VmHWM); [ -n "$h" ] && [ "$h" -gt "$SEND_HWM_POLL" ] && SEND_HWM_POLL=$h
  fi
  printf '%s\t%s\t%s\n' "$(awk -v a="$t0" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}')" "${s_rss:-}" "${c_rss:-}" >> "$WORK/samples.tsv"
  sleep "$INTERVAL"
done
rc=0; wait "$SENDER" || rc=$?
t1=$(now)
bg_forget "$SENDER"
SERVE_HWM=$(vm_kib "$SERVE" VmHWM)
read -r SERVE_USER SERVE_SYS < <(awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.2f %.2f\n", $12 / hz, $13 / hz }' "/proc/$SERVE/stat")
SERVE_CPU=$(awk -v u="$SERVE_USER" -v s="$SERVE_SYS" 'BEGIN{printf "%.2f", u + s}')
bg_stop "$SERVE" 5 || true
bg_forget "$SERVE"

[ "$rc" = 0 ] || { tail -n 5 "$WORK/send.err" >&2; die "send exited $rc"; }
if [ -n "$TIMEV" ]; then
  SEND_HWM=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/send.timev")
  SEND_USER=$(awk -F': ' '/User time/ {print $2}' "$WORK/send.timev")
  SEND_SYS=$(awk -F': ' '/System time/ {print $2}' "$WORK/send.timev")
  SEND_CPU=$(awk -v u="$SEND_USER" -v s="$SEND_SYS" 'BEGIN{printf "%.2f", u + s}')
else
  SEND_HWM=$SEND_HWM_POLL; SEND_CPU=nan; SEND_USER=nan; SEND_SYS=nan
fi
OK=fail
[ -f "$WORK/recv/src.bin" ] && [ "$(file_hash "$WORK/recv/src.bin")" = "$SRC_SHA" ] && OK=ok
WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
MAX_SERVE_SAMPLE=$(awk -F'\t' '$2>m {m=$2} END{print m+0}' "$WORK/samples.tsv")
MAX_SEND_SAMPLE=$(awk -F'\t' '$3>m {m=$3} END{print m+0}' "$WORK/samples.tsv")
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}'; }
# VmHWM can trail the sampled VmRSS by a little (the kernel folds per-thread RSS
# counters lazily): the peak reported is the larger of the two
SERVE_HWM=$(( SERVE_HWM > MAX_SERVE_SAMPLE ? SERVE_HWM : MAX_SERVE_SAMPLE ))
SEND_HWM=$(( SEND_HWM > MAX_SEND_SAMPLE ? SEND_HWM : MAX_SEND_SAMPLE ))

echo
echo "== rss: $SIZE ($BYTES bytes) over 2 loopback TCP links; commit $(git_rev) dirty=$(git_dirty); $(nproc) cores"
echo "   transfer wall ${WALL} s ($(awk -v b="$BYTES" -v w="$WALL" 'BEGIN{printf "%.0f", b/1e6/w}') MB/s), file verified: $OK"
printf '%-6s %14s %20s %8s %8s %8s\n' proc peak_rss_MiB max_sampled_rss_MiB cpu_s user_s sys_s
printf '%-6s %14s %20s %8s %8s %8s\n' serve "$(mib "$SERVE_HWM")" "$(mib "$MAX_SERVE_SAMPLE")" "$SERVE_CPU" "$SERVE_USER" "$SERVE_SYS"
printf '%-6s %14s %20s %8s %8s %8s\n' send "$(mib "$SEND_HWM")" "$(mib "$MAX_SEND_SAMPLE")" "$SEND_CPU" "$SEND_USER" "$SEND_SYS"
echo "   serve RSS before the transfer: $(mib "${SERVE_IDLE_KIB:-0}") MiB"

mkdir -p "$(dirname "$OUT")"
python3 - "$OUT" "$SIZE" "$BYTES" "$(git_rev)" "$(git_dirty)" "$WALL" "$OK" "$SERVE_HWM" "$SEND_HWM" \
  "${SERVE_IDLE_KIB:-0}" "$SERVE_CPU" "$SEND_CPU" "${TIMEV:-vmhwm-poll}" "$WORK/samples.tsv" "$SERVE_USER" "$SERVE_SYS" "$SEND_USER" "$SEND_SYS" <<'PY'
import json, sys, datetime, platform, os
out, size, nbytes, rev, dirty, wall, ok, serve_hwm, send_hwm, idle, scpu, ccpu, how, samples, su, ss, cu, cs = sys.argv[1:]
def f(x):
    try: return float(x)
    except ValueError: return None
rows = [l.rstrip("\n").split("\t") for l in open(samples)]
doc = {"bench": "rss", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(), "cpus": os.cpu_count(),
       "size": size, "bytes": int(nbytes), "links": 2, "wall_s": float(wall), "verified": ok == "ok",
       "serve": {"peak_rss_mib": int(serve_hwm) / 1024, "idle_rss_mib": int(idle) / 1024, "cpu_s": f(scpu),
                 "user_s": f(su), "sys_s": f(ss), "how": "VmHWM"},
       "send": {"peak_rss_mib": int(send_hwm) / 1024, "cpu_s": f(ccpu), "user_s": f(cu), "sys_s": f(cs),
                "how": "/usr/bin/time -v" if how != "vmhwm-poll" else "VmHWM polled"},
       "samples_t_serve_send_kib": [[f(r[0]), f(r[1]) if len(r) > 1 else None, f(r[2]) if len(r) > 2 else None] for r in rows]}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
