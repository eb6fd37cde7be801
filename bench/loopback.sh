#!/usr/bin/env bash
# One file over 127.0.0.1 TCP: socat (1 connection) vs gateway with 1 and 2 links.
#
#   bench/loopback.sh                 # SIZE=1G RUNS=3
#   SIZE=256M RUNS=5 bench/loopback.sh
#
# env: SIZE (default 1G; binary units like `head -c`), RUNS (default 3),
#      BENCH_TMP (parent of the work dir; default $TMPDIR or /tmp),
#      CARGO_TARGET_DIR (where the release binary is looked for),
#      SKIP_BUILD=1 (use the binary already built), KEEP=1 (keep the work dir),
#      OUT (results JSON; default bench/out/loopback.json).
# Runs are interleaved (socat, gw-1, gw-2, socat, ...); the table shows medians.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

SIZE=${SIZE:-1G}
RUNS=${RUNS:-3}
OUT=${OUT:-$BENCH_DIR/out/loopback.json}
BYTES=$(size_bytes "$SIZE")
TOOLS=(socat gateway-1link gateway-2links)

command -v socat >/dev/null || {
  log "socat missing; installing it with apt-get"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq socat >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq socat >/dev/null; fi
} || die "socat is needed (apt-get install socat)"

build_gateway
setup_work gw-loopback
# source + one received copy at a time, plus state DBs
need_space $((2 * BYTES + 64 * 1048576)) "$WORK"

SRC=$WORK/src.bin
log "generating $SIZE ($BYTES bytes) of incompressible data in $SRC"
t=$(now)
make_file "$SRC" "$BYTES"
log "generated in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s; hashing"
SRC_SHA=$(file_hash "$SRC")
RES=$WORK/results.tsv
: > "$RES"

# verify DEST: echo ok or FAIL(...)
verify() {
  [ -f "$1" ] || { echo "FAIL(missing)"; return; }
  [ "$(stat -c %s "$1")" = "$BYTES" ] || { echo "FAIL(size)"; return; }
  [ "$(file_hash "$1")" = "$SRC_SHA" ] && echo ok || echo "FAIL(hash)"
}

# CPU seconds (user+sys) a live process has used so far, from /proc/PID/stat.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo nan
}

run_socat() {  # run number -> appends a result line
  local run=$1 d=$WORK/run-socat-$1 port r t0 t1 rc=0
  mkdir -p "$d"
  port=$(free_port)
  t0=$(now)
  bg_start socat -b 262144 -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" "OPEN:$d/src.bin,creat,trunc"
  r=$BG_LAST
  wait_listen "$port" || die "socat did not listen on $port"
  socat -b 262144 -u "OPEN:$SRC" "TCP:127.0.0.1:$port" || rc=$?
  wait "$r" || rc=$?
  t1=$(now)
  bg_forget "$r"
  local ok; ok=$(verify "$d/src.bin"); [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  printf 'socat\t%s\t%s\t-\t-\t-\t%s\n' "$run" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')" "$ok" >> "$RES"
  rm -rf "$d"
}

run_gateway() {  # links run -> appends a result line
  local links=$1 run=$2 d=$WORK/run-gw$1-$2 s t0 t1 rc=0 i port listen=() to=() tm json
  mkdir -p "$d/recv"
  for ((i = 0; i < links; i++)); do
    port=$(free_port)
    listen+=(--listen "tcp:127.0.0.1:$port"); to+=(--to "tcp:127.0.0.1:$port")
  done
  trust_pair "$GW" "$d/state-recv" "$d/state-send"
  bg_start "$GW" -q --state "$d/state-recv" serve --dir "$d/recv" "${listen[@]}" > "$d/serve.log" 2>&1
  s=$BG_LAST
  for ((i = 1; i < ${#listen[@]}; i += 2)); do
    wait_listen "${listen[$i]##*:}" || die "gateway serve did not listen on ${listen[$i]} (see $d/serve.log)"
  done
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  { time "$GW" -q --state "$d/state-send" send "$SRC" "${to[@]}" --json > "$d/send.out" 2> "$d/send.err"; } 2> "$d/send.time" || rc=$?
  t1=$(now)
  # send returns after the receiver reported the verified file; check it really landed
  local landed=yes
  [ -f "$d/recv/src.bin" ] || landed=no
  local scpu; scpu=$(proc_cpu "$s")
  bg_stop "$s" 5 || true
  bg_forget "$s"
  json=$(tail -n 1 "$d/send.out" 2>/dev/null || true)
  local elapsed verdict
  elapsed=$(printf '%s' "$json" | python3 -c 'import json,sys
try: print(json.load(sys.stdin).get("elapsed_s", "nan"))
except Exception: print("nan")')
  verdict=$(printf '%s' "$json" | python3 -c 'import json,sys
try:
    j=json.load(sys.stdin); print(j.get("verdict"), ",".join("%.2f" % l["share"] for l in j.get("links", [])))
except Exception: print("none -")')
  tm=$(tail -n 1 "$d/send.time")
  local ok; ok=$(verify "$d/recv/src.bin")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  [ "${verdict%% *}" = ok ] || ok="FAIL(verdict=${verdict%% *})"
  [ "$landed" = yes ] || ok="$ok(file-not-in-place-at-exit)"
  if [ "$ok" != ok ]; then
    log "gateway $links link(s) run $run: $ok; send stderr:"; tail -n 5 "$d/send.err" >&2 || true
    log "serve log:"; tail -n 5 "$d/serve.log" >&2 || true
  fi
  # send cpu = user+sys of the send process; serve cpu read just before stopping it
  printf 'gateway-%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$([ "$links" = 1 ] && echo 1link || echo "${links}links")" "$run" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b-a}')" "$elapsed" \
    "$(awk '{printf "%.3f", $2 + $3}' <<< "$tm")" "$scpu" "$ok" "shares=${verdict#* }" >> "$RES"
  rm -rf "$d"
}

CACHED_BEFORE=$(cached_pct "$SRC")
log "source file: ${CACHED_BEFORE}% in page cache (it is not dropped between runs)"
log "binary $GW @ $(git_rev) (dirty=$(git_dirty)); SIZE=$SIZE RUNS=$RUNS; work dir $WORK"
for ((run = 1; run <= RUNS; run++)); do
  for tool in "${TOOLS[@]}"; do
    sync
    case $tool in
      socat) run_socat "$run" ;;
      gateway-1link) run_gateway 1 "$run" ;;
      gateway-2links) run_gateway 2 "$run" ;;
    esac
    log "run $run $(tail -n 1 "$RES" | awk -F'\t' -v b="$BYTES" '{printf "%-15s wall %7.3f s  %8.1f MB/s  elapsed_s %s  send_cpu %s  serve_cpu %s  %s %s", $1, $3, b/1e6/$3, $4, $5, $6, $7, $8}')"
  done
done
CACHED_AFTER=$(cached_pct "$SRC")

# ---------- report ----------
med() { awk -F'\t' -v t="$1" -v c="$2" '$1==t && $c!="-" && $c!="nan" {print $c}' "$RES" | median; }
SOCAT_WALL=$(med socat 3)
echo
echo "== loopback: $SIZE ($BYTES bytes) over 127.0.0.1 TCP; median of $RUNS runs; $(nproc) cores; commit $(git_rev) dirty=$(git_dirty)"
echo "   MB/s = 10^6 bytes / wall s. socat wall: receiver start -> receiver exit; gateway wall: send start -> send exit"
echo "   (serve already listening). Source file in page cache: ${CACHED_BEFORE}% before, ${CACHED_AFTER}% after."
printf '%-15s %9s %9s %9s %11s %10s %11s %8s\n' tool wall_s MB/s ratio elapsed_s send_cpu_s serve_cpu_s verified
for tool in "${TOOLS[@]}"; do
  w=$(med "$tool" 3)
  e=$(med "$tool" 4); sc=$(med "$tool" 5); rc=$(med "$tool" 6)
  v=$(awk -F'\t' -v t="$tool" '$1==t {n++; if ($7=="ok") o++} END{printf "%d/%d", o, n}' "$RES")
  printf '%-15s %9.3f %9.1f %9.3f %11s %10s %11s %8s\n' "$tool" "$w" \
    "$(awk -v b="$BYTES" -v w="$w" 'BEGIN{print b/1e6/w}')" \
    "$(awk -v s="$SOCAT_WALL" -v w="$w" 'BEGIN{print s/w}')" "$e" "$sc" "$rc" "$v"
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$BYTES" "$SIZE" "$RUNS" "$(git_rev)" "$(git_dirty)" "$CACHED_BEFORE" "$CACHED_AFTER" "$(nproc)" <<'PY'
import json, statistics, sys, datetime, platform
res, out, nbytes, size, runs, rev, dirty, cb, ca, ncpu = sys.argv[1:]
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
tools = list(dict.fromkeys(r["tool"] for r in rows))
summary = {}
for t in tools:
    rs = [r for r in rows if r["tool"] == t]
    el = [r["elapsed_s"] for r in rs if r["elapsed_s"] is not None]
    w = statistics.median(r["wall_s"] for r in rs)
    summary[t] = {"median_wall_s": w, "median_mb_per_s": nbytes / 1e6 / w,
                  "median_elapsed_s": statistics.median(el) if el else None,
                  "verified": sum(r["verified"] for r in rs), "runs": len(rs)}
if "socat" in summary:
    for t in tools:
        summary[t]["ratio_to_socat"] = summary["socat"]["median_wall_s"] / summary[t]["median_wall_s"]
doc = {"bench": "loopback", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(), "cpus": int(ncpu),
       "size": size, "bytes": nbytes, "runs": int(runs),
       "source_page_cache_pct": {"before": cb, "after": ca}, "summary": summary, "results": rows}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
