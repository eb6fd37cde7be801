#!/usr/bin/env bash
# Many small files over 127.0.0.1: gateway (one tree transfer) vs rsync
# (daemon mode) vs tar piped through socat.
#
#   bench/smallfiles.sh                     # N=10000 SIZE_KB=4 DIRS=50 RUNS=3
#   N=2000 RUNS=5 SKIP_BUILD=1 bench/smallfiles.sh
#
# env: N (files, default 10000), SIZE_KB (size of each, default 4),
#      DIRS (directories they are spread over, default 50), RUNS (default 3),
#      BENCH_TMP (parent of the work dir; default $TMPDIR or /tmp),
#      CARGO_TARGET_DIR (where the release binary is looked for),
#      SKIP_BUILD=1 (use the binary already built), KEEP=1 (keep the work dir),
#      GW_LOG=1 (run both gateway sides with RUST_LOG=info and keep the last
#      run's logs in the work dir: phase timestamps),
#      OUT (results JSON; default bench/out/smallfiles.json).
# Runs are interleaved (gateway, rsync, tar, gateway, ...); the table shows medians.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

N=${N:-10000}
SIZE_KB=${SIZE_KB:-4}
DIRS=${DIRS:-50}
RUNS=${RUNS:-3}
OUT=${OUT:-$BENCH_DIR/out/smallfiles.json}
TOOLS=(gateway rsync tar)

apt_install() {
  log "$1 missing; installing it with apt-get"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "$1" >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq "$1" >/dev/null; fi
}
command -v socat >/dev/null || apt_install socat || die "socat is needed (apt-get install socat)"
command -v rsync >/dev/null || apt_install rsync || die "rsync is needed (apt-get install rsync)"
command -v tar >/dev/null || die "tar is needed"

build_gateway
setup_work gw-smallfiles
BYTES=$((N * SIZE_KB * 1024))
# Every run's received tree is kept until the script exits, not deleted
# after its run: on ext4, creating files within seconds of deleting many
# others makes the inode allocator skip the recently deleted inodes
# (find_inode_bit -> recently_deleted; seen with perf here: 10,000 creates
# took 3.7 s of system time instead of 0.3 s), which would charge one tool
# for the previous tool's cleanup.
# source + RUNS x 3 received copies (plus per-file overhead), plus state DBs
need_space $(((1 + 3 * RUNS) * (BYTES + N * 4096) + 64 * 1048576)) "$WORK"

SRC=$WORK/src/tree
log "generating $N files of $SIZE_KB KiB (random) in $DIRS directories under $SRC"
t=$(now)
python3 - "$SRC" "$N" "$((SIZE_KB * 1024))" "$DIRS" <<'PY'
import os, sys
root, n, size, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for d in range(dirs):
    os.makedirs(os.path.join(root, "d%03d" % d), exist_ok=True)
for i in range(n):
    with open(os.path.join(root, "d%03d" % (i % dirs), "f%06d.bin" % i), "wb") as f:
        f.write(os.urandom(size))
PY
log "generated in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"

# sha256 over the sorted listing of DIR: every entry's relative path, kind,
# and (files) size and content hash. Equal digests = same tree.
tree_digest() {
  python3 - "$1" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
if not os.path.isdir(root):
    print("missing"); sys.exit()
out = hashlib.sha256()
items = []
for dp, dns, fns in os.walk(root):
    for n in dns:
        items.append((os.path.relpath(os.path.join(dp, n), root), "d", ""))
    for n in fns:
        p = os.path.join(dp, n)
        with open(p, "rb") as f:
            h = hashlib.sha256(f.read()).hexdigest()
        items.append((os.path.relpath(p, root), "f", "%d:%s" % (os.path.getsize(p), h)))
for it in sorted(items):
    out.update(("\0".join(it) + "\n").encode())
print(out.hexdigest())
PY
}
SRC_DIGEST=$(tree_digest "$SRC")
RES=$WORK/results.tsv
: > "$RES"

verify() {  # DEST -> ok | FAIL(...)
  [ -d "$1" ] || { echo "FAIL(missing)"; return; }
  [ "$(tree_digest "$1")" = "$SRC_DIGEST" ] && echo ok || echo "FAIL(tree differs)"
}

# CPU seconds (user+sys) a live process has used so far, from /proc/PID/stat.
proc_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo nan
}
# The same plus the CPU of its children that have exited and been reaped.
proc_cpu_all() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13 + $14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo nan
}

# result line: tool run wall_s elapsed_s send_cpu_s recv_cpu_s status
run_gateway() {
  local run=$1 d=$WORK/run-gw-$1 s t0 t1 rc=0 port json log_env=()
  mkdir -p "$d/recv"
  port=$(free_port)
  [ "${GW_LOG:-0}" = 1 ] && log_env=(env RUST_LOG=info)
  trust_pair "$GW" "$d/state-recv" "$d/state-send"
  bg_start "${log_env[@]}" "$GW" -q --state "$d/state-recv" serve --dir "$d/recv" --listen "tcp:127.0.0.1:$port" > "$d/serve.log" 2>&1
  s=$BG_LAST
  wait_listen "$port" || die "gateway serve did not listen on $port (see $d/serve.log)"
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  { time "${log_env[@]}" "$GW" -q --state "$d/state-send" send "$SRC" --to "tcp:127.0.0.1:$port" --json > "$d/send.out" 2> "$d/send.err"; } 2> "$d/send.time" || rc=$?
  t1=$(now)
  local scpu; scpu=$(proc_cpu "$s")
  bg_stop "$s" 5 || true
  bg_forget "$s"
  json=$(tail -n 1 "$d/send.out" 2>/dev/null || true)
  local elapsed verdict
  read -r elapsed verdict < <(printf '%s' "$json" | python3 -c 'import json,sys
try:
    j=json.load(sys.stdin); print(j.get("elapsed_s", "nan"), j.get("verdict"))
except Exception: print("nan none")')
  local ok; ok=$(verify "$d/recv/tree")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  [ "$verdict" = ok ] || ok="FAIL(verdict=$verdict)"
  if [ "$ok" != ok ]; then
    log "gateway run $run: $ok; send stderr:"; tail -n 5 "$d/send.err" >&2 || true
    log "serve log:"; tail -n 5 "$d/serve.log" >&2 || true
  fi
  printf 'gateway\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" "$elapsed" \
    "$(awk '{printf "%.3f", $2 + $3}' "$d/send.time" 2>/dev/null || echo nan)" "$scpu" "$ok" >> "$RES"
  if [ "${GW_LOG:-0}" = 1 ]; then
    cp "$d/serve.log" "$WORK/gw-serve-last.log"; cp "$d/send.err" "$WORK/gw-send-last.log"
  fi
  # kept until exit (see "recently deleted" at need_space)
}

# rsync in daemon mode on 127.0.0.1 (no ssh: no cipher in the way), -a
# (times, modes), no --fsync (rsync does not sync by default).
run_rsync() {
  local run=$1 d=$WORK/run-rsync-$1 s t0 t1 rc=0 port
  mkdir -p "$d/recv"
  port=$(free_port)
  cat > "$d/rsyncd.conf" <<EOF
use chroot = no
pid file = $d/rsyncd.pid
log file = $d/rsyncd.log
uid = $(id -u)
gid = $(id -g)
[dst]
  path = $d/recv
  read only = no
EOF
  bg_start rsync --daemon --no-detach --config="$d/rsyncd.conf" --address=127.0.0.1 --port="$port"
  s=$BG_LAST
  wait_listen "$port" || die "rsync --daemon did not listen on $port (see $d/rsyncd.log)"
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  { time rsync -a "$SRC" "rsync://127.0.0.1:$port/dst/" > "$d/rsync.out" 2>&1; } 2> "$d/send.time" || rc=$?
  t1=$(now)
  sleep 0.1  # let the daemon reap its per-connection child
  local scpu; scpu=$(proc_cpu_all "$s")  # daemon + its exited per-connection children
  bg_stop "$s" 5 || true
  bg_forget "$s"
  local ok; ok=$(verify "$d/recv/tree")
  [ "$rc" = 0 ] || { ok="FAIL(rc=$rc)"; tail -n 5 "$d/rsync.out" >&2 || true; }
  printf 'rsync\t%s\t%s\t-\t%s\t%s\t%s\n' "$run" "$(secs "$t0" "$t1")" \
    "$(awk '{printf "%.3f", $2 + $3}' "$d/send.time" 2>/dev/null || echo nan)" "$scpu" "$ok" >> "$RES"
  # kept until exit (see "recently deleted" at need_space)
}

# tar c | socat -> socat | tar x. Wall: receiver start -> receiver exit (as
# socat in loopback.sh). Nothing is synced.
run_tar() {
  local run=$1 d=$WORK/run-tar-$1 r t0 t1 rc=0 port
  mkdir -p "$d/recv"
  port=$(free_port)
  local TIMEFORMAT='%R %U %S'
  t0=$(now)
  bg_start socat -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" "EXEC:tar x -C $d/recv"
  r=$BG_LAST
  wait_listen "$port" || die "socat did not listen on $port"
  { time (tar c -C "$(dirname "$SRC")" "$(basename "$SRC")" | socat -u STDIN "TCP:127.0.0.1:$port"); } 2> "$d/send.time" || rc=$?
  wait "$r" || rc=$?
  t1=$(now)
  bg_forget "$r"
  local ok; ok=$(verify "$d/recv/tree")
  [ "$rc" = 0 ] || ok="FAIL(rc=$rc)"
  printf 'tar\t%s\t%s\t-\t%s\t-\t%s\n' "$run" "$(secs "$t0" "$t1")" \
    "$(awk '{printf "%.3f", $2 + $3}' "$d/send.time" 2>/dev/null || echo nan)" "$ok" >> "$RES"
  # kept until exit (see "recently deleted" at need_space)
}

log "binary $GW @ $(git_rev) (dirty=$(git_dirty)); N=$N SIZE_KB=$SIZE_KB DIRS=$DIRS RUNS=$RUNS; work dir $WORK"
for ((run = 1; run <= RUNS; run++)); do
  for tool in "${TOOLS[@]}"; do
    sync
    "run_$tool" "$run"
    log "run $run $(tail -n 1 "$RES" | awk -F'\t' -v n="$N" '{printf "%-8s wall %7.3f s  %8.0f files/s  elapsed_s %s  send_cpu %s  recv_cpu %s  %s", $1, $3, n/$3, $4, $5, $6, $7}')"
  done
done

# ---------- report ----------
med() { awk -F'\t' -v t="$1" -v c="$2" '$1==t && $c!="-" && $c!="nan" {print $c}' "$RES" | median; }
echo
echo "== smallfiles: $N files x $SIZE_KB KiB in $DIRS dirs ($BYTES bytes) over 127.0.0.1; median of $RUNS runs;"
echo "   $(nproc) cores; commit $(git_rev) dirty=$(git_dirty). files/s = N / wall s."
echo "   gateway: send start -> send exit (serve listening; exit = tree verified, landed, synced);"
echo "   rsync: 'rsync -a' to a daemon module (no fsync); tar: receiver start -> 'tar x' exit (no fsync)."
printf '%-8s %9s %10s %9s %10s %11s %11s %8s\n' tool wall_s files/s MB/s elapsed_s send_cpu_s recv_cpu_s verified
for tool in "${TOOLS[@]}"; do
  w=$(med "$tool" 3)
  v=$(awk -F'\t' -v t="$tool" '$1==t {n++; if ($7=="ok") o++} END{printf "%d/%d", o, n}' "$RES")
  printf '%-8s %9.3f %10.0f %9.1f %10.10s %11s %11s %8s\n' "$tool" "$w" \
    "$(awk -v n="$N" -v w="$w" 'BEGIN{print n/w}')" "$(awk -v b="$BYTES" -v w="$w" 'BEGIN{print b/1e6/w}')" \
    "$(med "$tool" 4)" "$(med "$tool" 5)" "$(med "$tool" 6)" "$v"
done
GW_W=$(med gateway 3)
echo "gateway/rsync (files/s) = $(awk -v a="$(med rsync 3)" -v b="$GW_W" 'BEGIN{printf "%.3f", a/b}')" \
     "  gateway/tar (files/s) = $(awk -v a="$(med tar 3)" -v b="$GW_W" 'BEGIN{printf "%.3f", a/b}')"

mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$N" "$SIZE_KB" "$DIRS" "$RUNS" "$(git_rev)" "$(git_dirty)" "$(nproc)" <<'PY'
import json, statistics, sys, datetime, platform
res, out, n, size_kb, dirs, runs, rev, dirty, ncpu = sys.argv[1:]
n = int(n)
def num(x):
    try: return float(x)
    except ValueError: return None
rows = []
for line in open(res):
    f = line.rstrip("\n").split("\t")
    rows.append({"tool": f[0], "run": int(f[1]), "wall_s": float(f[2]), "files_per_s": n / float(f[2]),
                 "elapsed_s": num(f[3]), "send_cpu_s": num(f[4]), "recv_cpu_s": num(f[5]),
                 "verified": f[6] == "ok", "status": f[6]})
summary = {}
for t in dict.fromkeys(r["tool"] for r in rows):
    rs = [r for r in rows if r["tool"] == t]
    w = statistics.median(r["wall_s"] for r in rs)
    summary[t] = {"median_wall_s": w, "median_files_per_s": n / w,
                  "verified": sum(r["verified"] for r in rs), "runs": len(rs)}
ratios = {}
for other in ("rsync", "tar"):
    if "gateway" in summary and other in summary:
        ratios["gateway_to_" + other] = summary[other]["median_wall_s"] / summary["gateway"]["median_wall_s"]
doc = {"bench": "smallfiles", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(), "cpus": int(ncpu),
       "files": n, "size_kb": int(size_kb), "dirs": int(dirs), "bytes": n * int(size_kb) * 1024,
       "runs": int(runs), "rsync_mode": "daemon on 127.0.0.1, rsync -a, no --fsync",
       "tar_mode": "tar c | socat -u STDIN TCP -> socat TCP-LISTEN EXEC:'tar x'",
       "summary": summary, "ratios_files_per_s": ratios, "results": rows}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
