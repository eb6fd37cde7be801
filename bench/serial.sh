#!/usr/bin/env bash
# One file over a virtual null-modem cable (a socat PTY pair): raw `cat`
# (the ceiling), ZMODEM (lrzsz sz/rz) and gateway over `serial:`.
#
#   bench/serial.sh                 # SIZE=64M RUNS=3
#   SIZE=16M RUNS=5 SKIP_BUILD=1 bench/serial.sh
#
# env: SIZE (default 64M; binary units like `head -c`), RUNS (default 3),
#      TIMEOUT (s one transfer may take before it counts as FAIL; default 120),
#      BENCH_TMP, CARGO_TARGET_DIR, SKIP_BUILD=1, KEEP=1,
#      OUT (results JSON; default bench/out/serial-<UTC time>.json).
# Per run, interleaved raw, zmodem, gateway, raw, ...; each transfer gets a
# fresh PTY pair (`socat -d -d pty,raw,echo=0 pty,raw,echo=0`) and a fresh
# receive directory. PTYs have no baud rate: this measures the CPU/protocol
# cost of each tool, not a UART.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

SIZE=${SIZE:-64M}
RUNS=${RUNS:-3}
TIMEOUT=${TIMEOUT:-120}
BYTES=$(size_bytes "$SIZE")
TOOLS=(raw zmodem gateway)

need_cmd socat socat
need_cmd sz lrzsz
need_cmd rz lrzsz

build_gateway
setup_work gw-serial
mkdir -p "$BENCH_DIR/out"
OUT=${OUT:-$BENCH_DIR/out/serial-$(date -u +%Y%m%d-%H%M%S).json}
need_space $((2 * BYTES + 64 * 1048576)) "$WORK"

SRC=$WORK/src.bin
make_file "$SRC" "$BYTES"
SRC_SHA=$(file_hash "$SRC")
RES=$WORK/results.tsv
: > "$RES"

verify() { # DEST -> ok or FAIL(...)
  [ -f "$1" ] || { echo "FAIL(missing)"; return; }
  [ "$(stat -c %s "$1")" = "$BYTES" ] || { echo "FAIL(size $(stat -c %s "$1"))"; return; }
  [ "$(file_hash "$1")" = "$SRC_SHA" ] && echo ok || echo "FAIL(hash)"
}
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo nan
}

# A fresh PTY pair: sets P1, P2 and CABLE (socat's PID).
CABLE=""
cable_up() {
  local log=$WORK/socat.log i
  : > "$log"
  bg_start socat -d -d pty,raw,echo=0 pty,raw,echo=0 2> "$log"
  CABLE=$BG_LAST
  for ((i = 0; i < 200; i++)); do
    [ "$(grep -c '/dev/pts/' "$log")" -ge 2 ] && break
    sleep 0.025
  done
  P1=$(grep -o '/dev/pts/[0-9]*' "$log" | sed -n 1p || true)
  P2=$(grep -o '/dev/pts/[0-9]*' "$log" | sed -n 2p || true)
  if [ -z "$P1" ] || [ -z "$P2" ]; then die "socat made no PTY pair: $(cat "$log")"; fi
}
cable_down() {
  [ -n "$CABLE" ] || return 0
  bg_stop "$CABLE" 2 || true
  bg_forget "$CABLE"
  CABLE=""
}

# Result line: tool run wall_s elapsed_s send_cpu serve_cpu status note
rec() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$RES"; }

run_raw() { # run
  local d=$WORK/run-raw-$1 r t0 t1 ok
  mkdir -p "$d"
  cable_up
  t0=$(now)
  # shellcheck disable=SC2016 # $1.. expand in the inner sh
  bg_start sh -c 'exec head -c "$1" < "$2" > "$3"' _ "$BYTES" "$P2" "$d/src.bin"
  r=$BG_LAST
  wait_open "$r" "$P2" || die "head did not open $P2"
  timeout "$TIMEOUT" cat "$SRC" > "$P1" || true
  if wait_exit "$r" "$t0"; then t1=$(now); ok=""; else t1=$(now); ok="FAIL(timeout)"; fi
  bg_stop "$r" 1 || true
  bg_forget "$r"
  cable_down
  [ -n "$ok" ] || ok=$(verify "$d/src.bin")
  rec raw "$1" "$(secs "$t0" "$t1")" - - - "$ok" ""
  rm -rf "$d"
}

# ZMODEM, the recipe of /work/shared/peers-bench/run_serial.sh: rz -b in the
# receive dir on one end, sz -b on the other; "landed" = sz exited 0 (it exits
# only after rz acknowledged ZEOF and closed the file) and the hash matches.
# rz then lingers ~30 s (sz's final "OO" is flushed away by TCFLSH on a PTY);
# that tail is not timed: rz is killed once sz has exited.
run_zmodem() { # run
  local d=$WORK/run-zmodem-$1 r t0 t1 rc=0 ok tm
  mkdir -p "$d/rx"
  cable_up
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  # shellcheck disable=SC2016 # $1.. expand in the inner sh
  bg_start sh -c 'cd "$1" && exec rz -b -q < "$2" > "$2" 2> ../rz.log' _ "$d/rx" "$P2"
  r=$BG_LAST
  # shellcheck disable=SC2094 # one PTY end is both sz's stdin and stdout
  { time timeout --kill-after=2 "$TIMEOUT" sz -b -q "$SRC" < "$P1" > "$P1" 2> "$d/sz.log"; } 2> "$d/sz.time" || rc=$?
  t1=$(now)
  bg_stop "$r" 1 || true
  bg_forget "$r"
  cable_down
  tm=$(tail -n 1 "$d/sz.time")
  ok=$(verify "$d/rx/src.bin")
  [ "$rc" = 0 ] || ok="FAIL(sz rc=$rc)"
  rec zmodem "$1" "$(secs "$t0" "$t1")" - "$(awk '{printf "%.3f", $2 + $3}' <<< "$tm")" - "$ok" ""
  [ "$ok" = ok ] || { log "zmodem run $1: $ok; sz.log:"; tail -c 400 "$d/sz.log" >&2 || true; }
  rm -rf "$d"
}

# gateway: serve listens on P1 (fresh state dirs, trusted both ways), send
# to P2; wall time of `send --json` once serve has the PTY open.
run_gateway() { # run
  local d=$WORK/run-gw-$1 s t0 t1 rc=0 ok json tm scpu
  mkdir -p "$d/recv"
  cable_up
  trust_pair "$GW" "$d/state-recv" "$d/state-send"
  bg_start "$GW" -q --state "$d/state-recv" serve --dir "$d/recv" --listen "serial:$P1" --no-mdns > "$d/serve.log" 2>&1
  s=$BG_LAST
  wait_open "$s" "$P1" || die "gateway serve did not open $P1 (see $d/serve.log: $(tail -n 3 "$d/serve.log"))"
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  { time timeout --kill-after=5 "$TIMEOUT" "$GW" -q --state "$d/state-send" send "$SRC" --to "serial:$P2" --json \
      > "$d/send.out" 2> "$d/send.err"; } 2> "$d/send.time" || rc=$?
  t1=$(now)
  scpu=$(proc_cpu "$s")
  bg_stop "$s" 5 || true
  bg_forget "$s"
  cable_down
  json=$(tail -n 1 "$d/send.out" 2>/dev/null || true)
  local fields
  fields=$(printf '%s' "$json" | python3 -c 'import json,sys
try:
    j=json.load(sys.stdin); l=j["links"][0]
    print(j.get("verdict"), "%.3f" % j.get("elapsed_s"), "bytes_sent=%s,link_mbps=%.1f,resent=%s" % (j.get("bytes_sent"), l["mbps"], l.get("resent")))
except Exception: print("none nan -")')
  tm=$(tail -n 1 "$d/send.time")
  ok=$(verify "$d/recv/src.bin")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  [ "${fields%% *}" = ok ] || ok="$ok(verdict=${fields%% *})"
  if [ "$ok" != ok ]; then
    log "gateway run $1: $ok; send stderr:"; tail -n 5 "$d/send.err" >&2 || true
    log "serve log:"; tail -n 5 "$d/serve.log" >&2 || true
  fi
  local rest=${fields#* }
  rec gateway "$1" "$(secs "$t0" "$t1")" "${rest%% *}" "$(awk '{printf "%.3f", $2 + $3}' <<< "$tm")" "$scpu" "$ok" "${rest#* }"
  rm -rf "$d"
}

log "binary $GW @ $(git_rev) (dirty=$(git_dirty)); SIZE=$SIZE RUNS=$RUNS; $(sz --version 2>&1 | head -n 1); work dir $WORK"
for ((run = 1; run <= RUNS; run++)); do
  for tool in "${TOOLS[@]}"; do
    sync
    "run_$tool" "$run"
    log "run $run $(tail -n 1 "$RES" | awk -F'\t' -v b="$BYTES" '{printf "%-8s wall %7.3f s  %7.1f MB/s  elapsed_s %s  send_cpu %s  serve_cpu %s  %s %s", $1, $3, b/1e6/$3, $4, $5, $6, $7, $8}')"
  done
done

# ---------- report ----------
med() { awk -F'\t' -v t="$1" -v c="$2" '$1==t && $7=="ok" && $c!="-" && $c!="nan" {print $c}' "$RES" | median; }
mbs() { awk -v b="$BYTES" -v w="$1" 'BEGIN{ if (w=="nan" || w==0) print "nan"; else printf "%.1f", b/1e6/w }'; }
RAW=$(mbs "$(med raw 3)")
ZM=$(mbs "$(med zmodem 3)")
GWM=$(mbs "$(med gateway 3)")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || b==0) print "nan"; else printf "%.2f", a/b }'; }
echo
echo "== serial: $SIZE ($BYTES bytes) over a socat PTY pair; median of $RUNS runs (verified runs only); $(nproc) cores; commit $(git_rev) dirty=$(git_dirty)"
echo "   MB/s = 10^6 bytes / wall s. raw: reader start -> reader has SIZE bytes; zmodem: rz start -> sz exit 0;"
echo "   gateway: send start -> send exit 0 (serve already has its PTY open)."
printf '%-9s %9s %9s %11s %10s %11s %8s  %s\n' tool wall_s MB/s elapsed_s send_cpu_s serve_cpu_s verified "per-run MB/s"
for tool in "${TOOLS[@]}"; do
  v=$(awk -F'\t' -v t="$tool" '$1==t {n++; if ($7=="ok") o++} END{printf "%d/%d", o, n}' "$RES")
  per=$(awk -F'\t' -v t="$tool" -v b="$BYTES" '$1==t {printf "%s%.1f%s", sep, b/1e6/$3, ($7=="ok" ? "" : "(" $7 ")"); sep=" / "}' "$RES")
  w=$(med "$tool" 3)
  printf '%-9s %9s %9s %11s %10s %11s %8s  %s\n' "$tool" "$w" "$(mbs "$w")" "$(med "$tool" 4)" "$(med "$tool" 5)" "$(med "$tool" 6)" "$v" "$per"
done
echo "gateway / raw    = $(ratio "$GWM" "$RAW")"
echo "gateway / zmodem = $(ratio "$GWM" "$ZM")"
awk -F'\t' '$1=="gateway" {print "   gateway run " $2 ": " $8}' "$RES"

python3 - "$RES" "$OUT" "$BYTES" "$SIZE" "$RUNS" "$(git_rev)" "$(git_dirty)" "$(nproc)" <<'PY'
import json, statistics, sys, datetime, platform
res, out, nbytes, size, runs, rev, dirty, ncpu = sys.argv[1:]
nbytes = int(nbytes)
def num(x):
    try: return float(x)
    except ValueError: return None
rows = []
for line in open(res):
    f = line.rstrip("\n").split("\t")
    rows.append({"tool": f[0], "run": int(f[1]), "wall_s": float(f[2]), "mb_per_s": nbytes / 1e6 / float(f[2]),
                 "elapsed_s": num(f[3]), "send_cpu_s": num(f[4]), "serve_cpu_s": num(f[5]),
                 "verified": f[6] == "ok", "status": f[6], "note": f[7] if len(f) > 7 else ""})
summary = {}
for t in dict.fromkeys(r["tool"] for r in rows):
    ok = [r for r in rows if r["tool"] == t and r["verified"]]
    w = statistics.median(r["wall_s"] for r in ok) if ok else None
    summary[t] = {"median_wall_s": w, "median_mb_per_s": nbytes / 1e6 / w if w else None,
                  "verified": len(ok), "runs": sum(r["tool"] == t for r in rows)}
def ratio(a, b):
    x, y = summary.get(a, {}).get("median_mb_per_s"), summary.get(b, {}).get("median_mb_per_s")
    return x / y if x and y else None
doc = {"bench": "serial", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(), "cpus": int(ncpu),
       "link": "socat PTY pair (pty,raw,echo=0)", "size": size, "bytes": nbytes, "runs": int(runs),
       "summary": summary, "ratios": {"gateway_over_raw": ratio("gateway", "raw"),
                                      "gateway_over_zmodem": ratio("gateway", "zmodem")},
       "results": rows}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
