#!/usr/bin/env bash
# mDNS discovery time between two nodes in two network namespaces joined by
# one veth pair: `alice` serves in namespace A, `bob` browses / sends from B.
#
#   bench/discovery.sh              # RUNS=10, as root
#   RUNS=5 SKIP_BUILD=1 bench/discovery.sh
#
# env: RUNS (default 10), SEND_SIZE (file for the send comparison; 1M),
#      GAP (s between two mDNS runs, untimed; 1.2 — a responder multicasts a
#      record at most once per second per interface, RFC 6762),
#      WARM_SETTLE (s between serve's first advertisement and the first warm
#      run, so its start-up announcements are over; 3), WARM_BROWSE (s; 1.5), COLD_BROWSE (s; 3), COLD_DELAY (s from starting
#      the browse to starting serve; 0.5), PORT (serve's TCP port; 7878),
#      BENCH_TMP, CARGO_TARGET_DIR, SKIP_BUILD=1, KEEP=1,
#      OUT (results JSON; default bench/out/discovery-<UTC timestamp>.json).
# Phases: warm discovery (serve already advertised; `peers --browse`),
# cold discovery (serve starts while `peers --browse` is running), and
# `send --to alice` (by name) vs `send --to tcp:IP:PORT` (by selector).
set -euo pipefail
export LC_ALL=C # EPOCHREALTIME and awk use the locale's decimal point
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(cd "$(dirname "$0")" && pwd)/lib.sh"

RUNS=${RUNS:-10}
SEND_SIZE=${SEND_SIZE:-1M}
GAP=${GAP:-1.2}
WARM_SETTLE=${WARM_SETTLE:-3}
WARM_BROWSE=${WARM_BROWSE:-1.5}
COLD_BROWSE=${COLD_BROWSE:-3}
COLD_DELAY=${COLD_DELAY:-0.5}
PORT=${PORT:-7878}
OUT=${OUT:-$BENCH_DIR/out/discovery-$(date -u +%Y%m%dT%H%M%SZ).json}
SEND_BYTES=$(size_bytes "$SEND_SIZE")

[ "$(id -u)" = 0 ] || die "network namespaces need root: run as root (e.g. sudo -E bench/discovery.sh)"
command -v ip >/dev/null || die "\`ip\` (iproute2) is missing: apt-get install iproute2"
ip netns list >/dev/null 2>&1 || die "\`ip netns\` does not work here (no network namespace support?)"
command -v python3 >/dev/null || die "python3 is needed to read gateway's JSON"

# Wall-clock stamp in seconds into variable $1 (no fork with bash >= 5).
stamp() { printf -v "$1" '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", (b - a) * 1000}'; }

build_gateway
REV=$(git_rev)
DIRTY=$(git_dirty) # of the tree just built (others may commit while this runs)
setup_work gw-discovery

# ---------- two namespaces, one veth pair ----------
TAG=$$
NS_A=gwdisc-a-$TAG
NS_B=gwdisc-b-$TAG
VETH_A=gwd${TAG}a
VETH_B=gwd${TAG}b
ADDR_A=10.231.77.1
ADDR_B=10.231.77.2
NETNS_MADE=()

disc_cleanup() {
  local ns
  cleanup # processes first (by PID), then the work dir
  for ns in "${NETNS_MADE[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap disc_cleanup EXIT

for ns in "$NS_A" "$NS_B"; do
  ip netns add "$ns" || die "ip netns add $ns failed"
  NETNS_MADE+=("$ns")
  ip -n "$ns" link set lo up
done
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B" ||
  die "cannot create the veth pair $VETH_A/$VETH_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B"
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up

# mDNS responders skip an interface that is not operationally up yet, and a
# new address (IPv6 link-local after DAD) makes them re-announce: wait for both.
wait_iface() {
  local ns=$1 dev=$2 i
  for ((i = 0; i < 200; i++)); do
    if ip -n "$ns" -br link show dev "$dev" | grep -q ' UP ' &&
      [ -z "$(ip -n "$ns" -6 addr show dev "$dev" tentative 2>/dev/null)" ]; then
      return 0
    fi
    sleep 0.05
  done
  die "$dev in $ns did not come up (ip -br link: $(ip -n "$ns" -br link show dev "$dev"))"
}
t=$(now)
wait_iface "$NS_A" "$VETH_A"
wait_iface "$NS_B" "$VETH_B"
log "namespaces $NS_A ($VETH_A $ADDR_A) and $NS_B ($VETH_B $ADDR_B) up in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}') s"

STATE_A=$WORK/state-alice
STATE_B=$WORK/state-bob
# Command prefixes (arrays, not functions: started in the background, `ip`
# and then gateway exec in the forked child, so the PID we keep is gateway's).
IN_A=(ip netns exec "$NS_A" "$GW" --state "$STATE_A" --name alice --type server)
IN_B=(ip netns exec "$NS_B" "$GW" --state "$STATE_B" --name bob)
INBOX=$WORK/inbox
mkdir -p "$INBOX"
ALICE_ID=$("$GW" -q --state "$STATE_A" id) || die "gateway id failed"
BOB_ID=$("$GW" -q --state "$STATE_B" id) || die "gateway id failed"
"$GW" -q --state "$STATE_A" trust "$BOB_ID" > /dev/null || die "gateway trust failed"
"$GW" -q --state "$STATE_B" trust "$ALICE_ID" > /dev/null || die "gateway trust failed"

# ---------- serve in A ----------
SERVE_PID=""
SERVE_LOG=""
SERVE_T0=""
t0="" t1="" tb="" # set by stamp
SERVE_N=0
start_serve() { # sets SERVE_PID, SERVE_LOG; stamps SERVE_T0 just before starting
  SERVE_N=$((SERVE_N + 1))
  SERVE_LOG=$WORK/serve-$SERVE_N.log
  stamp SERVE_T0
  bg_start "${IN_A[@]}" serve --dir "$INBOX" --listen "tcp:0.0.0.0:$PORT" > /dev/null 2> "$SERVE_LOG"
  SERVE_PID=$BG_LAST
}
wait_advertised() {
  local i
  for ((i = 0; i < 600; i++)); do
    grep -q 'advertised over mDNS' "$SERVE_LOG" 2>/dev/null && return 0
    if grep -q 'not advertised' "$SERVE_LOG" 2>/dev/null; then
      die "serve could not advertise: $(grep 'not advertised' "$SERVE_LOG")"
    fi
    kill -0 "$SERVE_PID" 2>/dev/null || die "serve exited: $(tail -n 5 "$SERVE_LOG")"
    sleep 0.05
  done
  die "serve did not print 'advertised over mDNS' within 30 s: $(tail -n 5 "$SERVE_LOG")"
}
stop_serve() {
  [ -n "$SERVE_PID" ] || return 0
  bg_stop "$SERVE_PID" 5 || true
  bg_forget "$SERVE_PID"
  SERVE_PID=""
}

# found_ms LIVE_LINKS of node $2 in the `peers --json` output file $1 ("null -" if absent).
peer_found() {
  python3 - "$1" "$2" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except Exception:
    rows = []
for p in rows:
    if p.get("node_id") == sys.argv[2] and p.get("found_ms") is not None:
        print(p["found_ms"], ",".join(p.get("live_links") or []) or "-")
        break
else:
    print("null -")
PY
}

RES=$WORK/results.tsv
: > "$RES"
log "binary $GW @ $REV (dirty=$DIRTY); RUNS=$RUNS; work dir $WORK"

# Client start-up cost (process start, key + DB open, no browsing): the cold
# figure counts from launching `peers`, so it is low by about this much.
for ((run = 1; run <= 3; run++)); do
  stamp t0
  "${IN_B[@]}" -q peers --browse 0 --json > /dev/null
  stamp t1
  printf 'client-start\t%s\t%s\tok\t-\n' "$run" "$(ms_between "$t0" "$t1")" >> "$RES"
done

start_serve
wait_advertised
log "serve (pid $SERVE_PID): $(grep 'advertised over mDNS' "$SERVE_LOG")"
sleep "$WARM_SETTLE"

# ---------- 1. warm: serve advertised long ago; a fresh `peers` browses ----------
for ((run = 1; run <= RUNS; run++)); do
  sleep "$GAP"
  out=$WORK/warm-$run.json
  rc=0
  "${IN_B[@]}" -q peers --browse "$WARM_BROWSE" --json > "$out" 2> "$WORK/warm-$run.err" || rc=$?
  read -r found links < <(peer_found "$out" "$ALICE_ID")
  st=ok
  [ "$rc" = 0 ] || st="FAIL(rc=$rc)"
  [ "$found" != null ] || { [ "$st" != ok ] || st=miss; found=nan; }
  printf 'warm\t%s\t%s\t%s\t%s\n' "$run" "$found" "$st" "$links" >> "$RES"
  log "warm run $run: alice found_ms $found ($st; $links)"
done

# ---------- 2. cold: serve starts while `peers` is already browsing ----------
for ((run = 1; run <= RUNS; run++)); do
  stop_serve
  sleep "$GAP"
  out=$WORK/cold-$run.json
  stamp tb
  bg_start "${IN_B[@]}" -q peers --browse "$COLD_BROWSE" --json > "$out" 2> "$WORK/cold-$run.err"
  browse_pid=$BG_LAST
  sleep "$COLD_DELAY"
  start_serve
  rc=0
  wait "$browse_pid" || rc=$?
  bg_forget "$browse_pid"
  wait_advertised
  offset=$(ms_between "$tb" "$SERVE_T0")
  read -r found links < <(peer_found "$out" "$ALICE_ID")
  st=ok
  [ "$rc" = 0 ] || st="FAIL(rc=$rc)"
  if [ "$found" = null ]; then
    [ "$st" != ok ] || st=miss
    cold=nan; found=nan
  else
    cold=$(awk -v f="$found" -v o="$offset" 'BEGIN{printf "%.1f", f - o}')
  fi
  printf 'cold\t%s\t%s\t%s\tfound_ms=%s offset_ms=%s %s\n' "$run" "$cold" "$st" "$found" "$offset" "$links" >> "$RES"
  log "cold run $run: found_ms $found - serve started ${offset} ms after the browse = $cold ms ($st)"
done

# ---------- 3. send 1 file: by name vs by selector ----------
SRC=$WORK/src.bin
make_file "$SRC" "$SEND_BYTES"
SRC_SHA=$(file_hash "$SRC")
sleep "$WARM_SETTLE" # serve was restarted by the last cold run

# send_one VARIANT RUN: appends a result line
#   name       --to alice with bob's state (its peerstore knows alice's link)
#   name-mdns  --to alice from a fresh state dir holding bob's key and trusting
#              alice's id only: no known link, so alice is found by mDNS
#   selector   --to tcp:ADDR_A:PORT
send_one() {
  local variant=$1 run=$2 f state to t0 t1 rc=0 json got st
  f=$WORK/$variant-$run.bin
  cp "$SRC" "$f"
  state=$STATE_B
  to=alice
  case $variant in
    name-mdns)
      state=$WORK/state-bob-fresh-$run
      mkdir -m 700 "$state"
      cp "$STATE_B/node.key" "$state/"
      "$GW" -q --state "$state" trust "$ALICE_ID" > /dev/null || die "gateway trust failed"
      ;;
    selector) to=tcp:$ADDR_A:$PORT ;;
  esac
  sleep "$GAP"
  stamp t0
  ip netns exec "$NS_B" "$GW" -q --state "$state" --name bob send "$f" --to "$to" --json \
    > "$WORK/send-$variant-$run.out" 2> "$WORK/send-$variant-$run.err" || rc=$?
  stamp t1
  json=$(tail -n 1 "$WORK/send-$variant-$run.out" 2>/dev/null || true)
  got=$(printf '%s' "$json" | python3 -c 'import json,sys
try:
    j = json.load(sys.stdin)
    d = j.get("discovery_ms")
    print(j.get("verdict"), "nan" if d is None else d, j.get("elapsed_s", "nan"),
          ",".join(l["selector"] for l in j.get("links", [])) or "-")
except Exception:
    print("none nan nan -")')
  read -r verdict disc elapsed links <<< "$got"
  st=ok
  if [ "$rc" != 0 ]; then st="FAIL(rc=$rc)"
  elif [ "$verdict" != ok ]; then st="FAIL(verdict=$verdict)"
  elif [ ! -f "$INBOX/$(basename "$f")" ] || [ "$(file_hash "$INBOX/$(basename "$f")")" != "$SRC_SHA" ]; then
    st="FAIL(received file missing or different)"
  fi
  if [ "$st" != ok ]; then
    log "send $variant run $run: $st"; tail -n 5 "$WORK/send-$variant-$run.err" >&2 || true
  fi
  printf 'send-%s\t%s\t%s\t%s\tdiscovery_ms=%s elapsed_s=%s links=%s\n' "$variant" "$run" \
    "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.4f", b - a}')" "$st" "$disc" "$elapsed" "$links" >> "$RES"
  log "send $variant run $run: $(tail -n 1 "$RES" | cut -f3-)"
  rm -f "$f" "$INBOX/$(basename "$f")"
  [ "$variant" != name-mdns ] || rm -rf "$state"
}
for ((run = 1; run <= RUNS; run++)); do
  for variant in name selector name-mdns; do send_one "$variant" "$run"; done
done
stop_serve

# ---------- report ----------
mkdir -p "$(dirname "$OUT")"
python3 - "$RES" "$OUT" "$RUNS" "$REV" "$DIRTY" "$(nproc)" "$SEND_BYTES" \
  "$GAP" "$WARM_SETTLE" "$WARM_BROWSE" "$COLD_BROWSE" "$COLD_DELAY" "$(uname -r)" <<'PY'
import json, statistics, sys, datetime, platform
res, out, runs, rev, dirty, ncpu, nbytes, gap, ws, wb, cb, cd, kernel = sys.argv[1:]
def num(x):
    try:
        v = float(x)
        return None if v != v else v
    except ValueError:
        return None
rows = []
for line in open(res):
    f = line.rstrip("\n").split("\t")
    r = {"kind": f[0], "run": int(f[1]), "value": num(f[2]), "status": f[3]}
    for kv in f[4].split(" "):
        if "=" in kv:
            k, v = kv.split("=", 1)
            r[k] = num(v) if k != "links" else v
        elif kv not in ("", "-"):
            r["live_links"] = kv
    rows.append(r)
def stats(kind, key="value"):
    rs = [r for r in rows if r["kind"] == kind]
    vs = sorted(r[key] for r in rs if r["status"] == "ok" and r.get(key) is not None)
    s = {"n": len(rs), "ok": sum(r["status"] == "ok" for r in rs)}
    if vs:
        s.update(min=vs[0], median=statistics.median(vs), max=vs[-1])
    return s
summary = {
    "client_start_ms": stats("client-start"),
    "warm_found_ms": stats("warm"),
    "cold_ms_after_serve_start": stats("cold"),
    "cold_found_ms_raw": stats("cold", "found_ms"),
    "cold_offset_ms": stats("cold", "offset_ms"),
}
for v in ("name", "selector", "name-mdns"):
    summary["send_" + v.replace("-", "_")] = {
        "wall_s": stats("send-" + v), "discovery_ms": stats("send-" + v, "discovery_ms"),
        "elapsed_s": stats("send-" + v, "elapsed_s")}
def med(s):
    return s.get("median")
sel = med(summary["send_selector"]["wall_s"])
for v in ("name", "name_mdns"):
    m = med(summary["send_" + v]["wall_s"])
    summary["send_" + v]["minus_selector_ms"] = None if m is None or sel is None else (m - sel) * 1000

def fmt(x, d=1):
    return "-" if x is None else f"{x:.{d}f}"
print()
print(f"== discovery: alice (serve) and bob in two network namespaces, one veth pair; "
      f"{runs} runs; {ncpu} cores; kernel {kernel}; commit {rev} dirty={dirty}")
print(f"   warm: `peers --browse {wb}`, serve advertised >= {ws} s before; cold: `peers --browse {cb}` started "
      f"{cd} s before serve, figure = found_ms - (serve launch - peers launch); gap {gap} s between runs")
print(f"{'what':<46} {'ok':>6} {'min':>9} {'median':>9} {'max':>9}")
def line(label, s, d=1, scale=1.0):
    g = lambda k: None if s.get(k) is None else s[k] * scale
    print(f"{label:<46} {str(s['ok']) + '/' + str(s['n']):>6} {fmt(g('min'), d):>9} {fmt(g('median'), d):>9} {fmt(g('max'), d):>9}")
line("warm discovery, found_ms", summary["warm_found_ms"])
line("cold discovery, ms after serve launch", summary["cold_ms_after_serve_start"])
line("  cold found_ms as measured (from browse)", summary["cold_found_ms_raw"])
line("  serve launch after peers launch, ms", summary["cold_offset_ms"])
line("client start-up (peers --browse 0), ms", summary["client_start_ms"])
for v, label in (("selector", "send 1 file --to tcp:IP:PORT"), ("name", "send --to alice (known link)"),
                 ("name_mdns", "send --to alice (fresh DB: mDNS)")):
    s = summary["send_" + v]
    line(label + ", wall ms", s["wall_s"], scale=1000)
    line("  its discovery_ms", s["discovery_ms"])
    line("  its elapsed_s, ms", s["elapsed_s"], scale=1000)
for v in ("name", "name_mdns"):
    print(f"by name minus by selector ({v}), median wall: {fmt(summary['send_' + v]['minus_selector_ms'])} ms")
doc = {"bench": "discovery", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": rev, "worktree_dirty": dirty == "true", "host": platform.node(), "kernel": kernel,
       "cpus": int(ncpu), "runs": int(runs), "send_bytes": int(nbytes),
       "params": {"gap_s": float(gap), "warm_settle_s": float(ws), "warm_browse_s": float(wb), "cold_browse_s": float(cb),
                  "cold_delay_s": float(cd)},
       "summary": summary, "results": rows}
with open(out, "w") as fh:
    json.dump(doc, fh, indent=1)
    fh.write("\n")
PY
echo "(results: $OUT)"
