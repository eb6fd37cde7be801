#!/usr/bin/env bash
# One file over two different links at once: a TCP path shaped with tbf and
# a paced serial line (two PTYs joined by bench/pty_pace.py), each alone and
# both together, in the same run.
#
#   bench/hetero.sh                                   # as root; SIZE=64M RUNS=3
#   TCP_MBIT=100 SERIAL_MBIT=25 SIZE=32M bench/hetero.sh
#
# Two namespaces (A sends, B receives) joined by one veth pair
# 10.89.0.1 <-> 10.89.0.2, each end shaped with `tbf rate TCP_MBIT burst 64kb
# latency 25ms` (as bench/multilink.sh), cubic. The serial line: a fresh
# pty_pace.py per transfer, SERIAL_MBIT per direction; serve (in B) opens one
# PTY, send (in A) the other (PTYs are not namespaced).
#
# Per run, interleaved: socat over TCP alone, gateway over TCP alone, raw
# `cat` through the paced line (its ceiling), gateway over serial alone,
# gateway over both. Printed as MB/s and % of the sum of the two single-link
# gateway figures (and of the two raw ceilings), with the byte split from
# `send --json` next to the ratio of the single-link rates.
#
# env: TCP_MBIT (50), SERIAL_MBIT (50), SIZE (64M), RUNS (3), TIMEOUT (300 s
#      per transfer), SKIP_BUILD=1, KEEP=1, BENCH_TMP, CARGO_TARGET_DIR,
#      OUT (default bench/out/hetero-<UTC time>.json).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, tc)"
for t in ip tc python3; do command -v $t > /dev/null || die "missing $t"; done
TCP_MBIT=${TCP_MBIT:-50}
SERIAL_MBIT=${SERIAL_MBIT:-50}
SIZE=${SIZE:-64M}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-300}
BYTES=$(size_bytes "$SIZE")
NA=gwhtA$$
NB=gwhtB$$
VA=hta$$
VB=htb$$
PORT=7878
TOOLS=(socat-tcp gw-tcp raw-serial gw-serial gw-both)
need_cmd socat socat

build_gateway
setup_work gw-hetero
mkdir -p "$BENCH_DIR/out"
OUT=${OUT:-$BENCH_DIR/out/hetero-$(date -u +%Y%m%d-%H%M%S).json}
need_space $((2 * BYTES + 64 * 1048576)) "$WORK"
topo_down() {
  ip netns del "$NA" 2> /dev/null || true
  ip netns del "$NB" 2> /dev/null || true
}
trap 'cleanup; topo_down' EXIT
ina() { ip netns exec "$NA" "$@"; }
inb() { ip netns exec "$NB" "$@"; }

topo_up() {
  topo_down
  ip netns add "$NA"
  ip netns add "$NB"
  for n in "$NA" "$NB"; do ip -n "$n" link set lo up; done
  ip link add "$VA" netns "$NA" type veth peer name "$VB" netns "$NB"
  ip -n "$NA" addr add 10.89.0.1/24 dev "$VA"
  ip -n "$NB" addr add 10.89.0.2/24 dev "$VB"
  ip -n "$NA" link set "$VA" up
  ip -n "$NB" link set "$VB" up
  tc -n "$NA" qdisc add dev "$VA" root tbf rate "${TCP_MBIT}mbit" burst 64kb latency 25ms
  tc -n "$NB" qdisc add dev "$VB" root tbf rate "${TCP_MBIT}mbit" burst 64kb latency 25ms
  ip -n "$NA" route add 10.89.0.2/32 dev "$VA" congctl cubic
  ip -n "$NB" route add 10.89.0.1/32 dev "$VB" congctl cubic
  until ip -n "$NA" -br link show dev "$VA" | grep -q ' UP ' &&
    ip -n "$NB" -br link show dev "$VB" | grep -q ' UP '; do sleep 0.05; done
}

wait_listen_ns() { # ns port
  local i
  for ((i = 0; i < 400; i++)); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2> /dev/null | grep -q . && return 0
    sleep 0.025
  done
  die "nothing listens on port $2 in $1"
}

SRC=$WORK/src.bin
make_file "$SRC" "$BYTES"
SRC_SHA=$(file_hash "$SRC")
RES=$WORK/results.tsv
: > "$RES"
# tool run wall_s status tcp_bytes serial_bytes tcp_mbps serial_mbps resent
rec() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$RES"; }
verify() {
  [ -f "$1" ] || { echo "FAIL(missing)"; return; }
  [ "$(stat -c %s "$1")" = "$BYTES" ] || { echo "FAIL(size $(stat -c %s "$1"))"; return; }
  [ "$(file_hash "$1")" = "$SRC_SHA" ] && echo ok || echo "FAIL(hash)"
}

# A fresh paced line: sets S1 (serve's end), S2 (send's end), LINE (its PID).
LINE=""
line_up() {
  local f=$WORK/pace.$RANDOM i
  bg_start python3 "$BENCH_DIR/pty_pace.py" --mbit "$SERIAL_MBIT" > "$f"
  LINE=$BG_LAST
  for ((i = 0; i < 400; i++)); do
    [ -s "$f" ] && break
    sleep 0.025
  done
  read -r S1 S2 < "$f" || die "pty_pace.py printed no PTYs"
  if [ ! -c "$S1" ] || [ ! -c "$S2" ]; then die "pty_pace.py printed '$S1 $S2', not two PTYs"; fi
}
line_down() {
  [ -n "$LINE" ] || return 0
  bg_stop "$LINE" 2 || true
  bg_forget "$LINE"
  LINE=""
}

run_socat_tcp() { # run
  local d=$WORK/run-socat-$1 r t0 t1 rc=0 ok
  mkdir -p "$d"
  bg_start ip netns exec "$NB" socat -u "TCP-LISTEN:5400,reuseaddr" "OPEN:$d/src.bin,creat,trunc"
  r=$BG_LAST
  wait_listen_ns "$NB" 5400
  t0=$(now)
  ina timeout "$TIMEOUT" socat -u "OPEN:$SRC" TCP:10.89.0.2:5400 || rc=$?
  wait_exit "$r" "$t0" || rc=timeout
  t1=$(now)
  bg_stop "$r" 1 || true
  bg_forget "$r"
  ok=$(verify "$d/src.bin")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  rec socat-tcp "$1" "$(secs "$t0" "$t1")" "$ok" "$BYTES" 0 - - -
  rm -rf "$d"
}

run_raw_serial() { # run
  local d=$WORK/run-raw-$1 r t0 t1 ok=""
  mkdir -p "$d"
  line_up
  # shellcheck disable=SC2016 # $1.. expand in the inner sh
  bg_start ip netns exec "$NB" sh -c 'exec head -c "$1" < "$2" > "$3"' _ "$BYTES" "$S1" "$d/src.bin"
  r=$BG_LAST
  wait_open "$r" "$S1" || die "head did not open $S1"
  t0=$(now)
  # shellcheck disable=SC2016 # $1.. expand in the inner sh
  ina timeout "$TIMEOUT" sh -c 'exec cat "$1" > "$2"' _ "$SRC" "$S2" || true
  wait_exit "$r" "$t0" || ok="FAIL(timeout)"
  t1=$(now)
  bg_stop "$r" 1 || true
  bg_forget "$r"
  line_down
  [ -n "$ok" ] || ok=$(verify "$d/src.bin")
  rec raw-serial "$1" "$(secs "$t0" "$t1")" "$ok" 0 "$BYTES" - - -
  rm -rf "$d"
}

# gateway over "tcp", "serial" or "both"; serve (in B) listens only on what
# is used; wall time of `send --json` (in A) once serve listens.
run_gw() { # what run
  local what=$1 run=$2 d=$WORK/run-gw-$1-$2 s t0 t1 rc=0 ok listen=() to=() fields
  mkdir -p "$d/recv"
  trust_pair "$GW" "$d/state-recv" "$d/state-send"
  if [ "$what" != serial ]; then
    listen+=(--listen "tcp:0.0.0.0:$PORT"); to+=(--to "tcp:10.89.0.2:$PORT")
  fi
  if [ "$what" != tcp ]; then
    line_up
    listen+=(--listen "serial:$S1"); to+=(--to "serial:$S2")
  fi
  bg_start ip netns exec "$NB" "$GW" -q --state "$d/state-recv" serve --dir "$d/recv" "${listen[@]}" --no-mdns > "$d/serve.log" 2>&1
  s=$BG_LAST
  if [ "$what" != serial ]; then wait_listen_ns "$NB" "$PORT"; fi
  if [ "$what" != tcp ]; then
    wait_open "$s" "$S1" || die "gateway serve did not open $S1 ($(tail -n 3 "$d/serve.log"))"
  fi
  t0=$(now)
  ina timeout --kill-after=5 "$TIMEOUT" "$GW" -q --state "$d/state-send" send "$SRC" "${to[@]}" --json \
    > "$d/send.out" 2> "$d/send.err" || rc=$?
  t1=$(now)
  bg_stop "$s" 5 || true
  bg_forget "$s"
  line_down
  fields=$(tail -n 1 "$d/send.out" 2> /dev/null | python3 -c 'import json,sys
try:
    j=json.load(sys.stdin)
    t=[l for l in j["links"] if l["selector"].startswith("tcp:")]
    s=[l for l in j["links"] if l["selector"].startswith("serial:")]
    g=lambda ls, k: ("%.2f" % ls[0][k]) if ls and k=="mbps" else (str(ls[0][k]) if ls else "0")
    print(j["verdict"], g(t,"bytes"), g(s,"bytes"), g(t,"mbps") if t else "-", g(s,"mbps") if s else "-",
          "%s/%s" % (g(t,"resent"), g(s,"resent")))
except Exception: print("none 0 0 - - -")')
  read -r verdict tb sb tm sm resent <<< "$fields"
  ok=$(verify "$d/recv/src.bin")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  [ "$verdict" = ok ] || ok="$ok(verdict=$verdict)"
  if [ "$ok" != ok ]; then
    log "gateway $what run $run: $ok; send stderr:"; tail -n 5 "$d/send.err" >&2 || true
    log "serve log:"; tail -n 5 "$d/serve.log" >&2 || true
  fi
  rec "gw-$what" "$run" "$(secs "$t0" "$t1")" "$ok" "$tb" "$sb" "$tm" "$sm" "$resent"
  rm -rf "$d"
}

topo_up
log "binary $GW @ $(git_rev) (dirty=$(git_dirty)); TCP tbf ${TCP_MBIT} Mbit/s, serial paced ${SERIAL_MBIT} Mbit/s; SIZE=$SIZE RUNS=$RUNS; work dir $WORK"
for ((run = 1; run <= RUNS; run++)); do
  for tool in "${TOOLS[@]}"; do
    sync
    case $tool in
      socat-tcp) run_socat_tcp "$run" ;;
      raw-serial) run_raw_serial "$run" ;;
      gw-*) run_gw "${tool#gw-}" "$run" ;;
    esac
    log "run $run $(tail -n 1 "$RES" | awk -F'\t' -v b="$BYTES" '{printf "%-10s wall %7.3f s  %6.2f MB/s  %s  bytes tcp/serial %s/%s  link MB/s %s/%s  resent %s", $1, $3, b/1e6/$3, $4, $5, $6, $7, $8, $9}')"
  done
done

# ---------- report ----------
med() { awk -F'\t' -v t="$1" '$1==t && $4=="ok" {print $3}' "$RES" | median; }
mbs() { awk -v b="$BYTES" -v w="$1" 'BEGIN{ if (w=="nan" || w==0) print "nan"; else printf "%.2f", b/1e6/w }'; }
for t in "${TOOLS[@]}"; do declare "V_${t//-/_}=$(mbs "$(med "$t")")"; done
# shellcheck disable=SC2154 # set by the declare above
{
  SUM_GW=$(awk -v a="$V_gw_tcp" -v b="$V_gw_serial" 'BEGIN{printf "%.2f", a+b}')
  SUM_RAW=$(awk -v a="$V_socat_tcp" -v b="$V_raw_serial" 'BEGIN{printf "%.2f", a+b}')
  RATE_SHARE=$(awk -v a="$V_gw_tcp" -v b="$V_gw_serial" 'BEGIN{printf "%.1f/%.1f", 100*a/(a+b), 100*b/(a+b)}')
  RAW_SHARE=$(awk -v a="$V_socat_tcp" -v b="$V_raw_serial" 'BEGIN{printf "%.1f/%.1f", 100*a/(a+b), 100*b/(a+b)}')
}
pct() { awk -v x="$1" -v s="$2" 'BEGIN{ if (x=="nan" || s==0) print "nan"; else printf "%.1f%%", 100*x/s }'; }
{
  echo
  echo "== hetero: $SIZE ($BYTES bytes); TCP veth tbf ${TCP_MBIT} Mbit/s + serial PTY paced ${SERIAL_MBIT} Mbit/s; median of $RUNS runs (verified only); commit $(git_rev) dirty=$(git_dirty)"
  echo "   MB/s = 10^6 B / wall s. gw sum = gateway TCP alone + gateway serial alone; raw sum = socat TCP alone + raw cat serial alone."
  printf '%-32s %8s %9s %9s %8s  %s\n' transfer MB/s "of gw sum" "of raw sum" verified "per-run MB/s"
  for t in "${TOOLS[@]}"; do
    v=$(eval echo "\$V_${t//-/_}")
    n=$(awk -F'\t' -v t="$t" '$1==t {n++; if ($4=="ok") o++} END{printf "%d/%d", o, n}' "$RES")
    per=$(awk -F'\t' -v t="$t" -v b="$BYTES" '$1==t {printf "%s%.2f%s", sep, b/1e6/$3, ($4=="ok" ? "" : "(" $4 ")"); sep=" / "}' "$RES")
    case $t in
      socat-tcp) label="socat, TCP alone" ;;
      gw-tcp) label="gateway, TCP alone" ;;
      raw-serial) label="raw cat, paced serial alone" ;;
      gw-serial) label="gateway, serial alone" ;;
      gw-both) label="gateway, TCP + serial" ;;
    esac
    printf '%-32s %8s %9s %9s %8s  %s\n' "$label" "$v" "$(pct "$v" "$SUM_GW")" "$(pct "$v" "$SUM_RAW")" "$n" "$per"
  done
  printf '%-32s %8s\n' "sum of gateway single links" "$SUM_GW"
  printf '%-32s %8s\n' "sum of raw single links" "$SUM_RAW"
  echo
  echo "byte split of gateway TCP + serial (tcp/serial %, from send --json), per run:"
  awk -F'\t' '$1=="gw-both" {t=$5+$6; if (t>0) printf "   run %s: %.1f/%.1f   (link MB/s tcp %s, serial %s; resent tcp/serial %s B)%s\n", $2, 100*$5/t, 100*$6/t, $7, $8, $9, ($4=="ok" ? "" : "  " $4)}' "$RES"
  echo "rate ratio of the single links: gateway $RATE_SHARE, raw $RAW_SHARE (tcp/serial %)"
} | tee "$WORK/report.txt"

python3 - "$RES" "$OUT" "$BYTES" "$SIZE" "$RUNS" "$TCP_MBIT" "$SERIAL_MBIT" "$(git_rev)" "$(git_dirty)" << 'PY'
import json, statistics, sys, datetime, platform
res, out, nbytes, size, runs, tcp_mbit, ser_mbit, rev, dirty = sys.argv[1:]
nbytes = int(nbytes)
def num(x):
    try: return float(x)
    except ValueError: return None
rows = []
for line in open(res):
    f = line.rstrip("\n").split("\t")
    rows.append({"tool": f[0], "run": int(f[1]), "wall_s": float(f[2]), "mb_per_s": nbytes / 1e6 / float(f[2]),
                 "verified": f[3] == "ok", "status": f[3], "tcp_bytes": int(f[4]), "serial_bytes": int(f[5]),
                 "tcp_link_mbps": num(f[6]), "serial_link_mbps": num(f[7]), "resent_tcp_serial": f[8]})
summary = {}
for t in dict.fromkeys(r["tool"] for r in rows):
    ok = [r for r in rows if r["tool"] == t and r["verified"]]
    w = statistics.median(r["wall_s"] for r in ok) if ok else None
    summary[t] = {"median_wall_s": w, "median_mb_per_s": nbytes / 1e6 / w if w else None,
                  "verified": len(ok), "runs": sum(r["tool"] == t for r in rows)}
g = lambda t: summary.get(t, {}).get("median_mb_per_s") or 0
sum_gw, sum_raw = g("gw-tcp") + g("gw-serial"), g("socat-tcp") + g("raw-serial")
both = [r for r in rows if r["tool"] == "gw-both" and r["verified"]]
doc = {"bench": "hetero", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(),
       "tcp": "veth, tbf rate %s mbit burst 64kb latency 25ms, cubic" % tcp_mbit,
       "serial": "PTY pair paced by bench/pty_pace.py at %s Mbit/s per direction" % ser_mbit,
       "size": size, "bytes": nbytes, "runs": int(runs), "summary": summary,
       "sum_gateway_single_mb_per_s": sum_gw, "sum_raw_single_mb_per_s": sum_raw,
       "both_pct_of_gateway_sum": 100 * g("gw-both") / sum_gw if sum_gw else None,
       "both_pct_of_raw_sum": 100 * g("gw-both") / sum_raw if sum_raw else None,
       "rate_share_tcp_gateway": g("gw-tcp") / sum_gw if sum_gw else None,
       "byte_share_tcp_per_run": [r["tcp_bytes"] / (r["tcp_bytes"] + r["serial_bytes"]) for r in both],
       "results": rows}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
