#!/usr/bin/env bash
# One file over three shaped network paths at once: each path alone, kernel
# MPTCP over all three, and gateway with one TCP link per path, in the same
# run; then a path set down mid-transfer.
#
# Two namespaces (A sends, B receives) joined by three veth pairs
# 10.88.{1,2,3}.{1,2}, each end shaped with tbf to RATES Mbit/s. Every
# throughput is printed as a % of the sum of the single paths (measured
# in the same run with socat over each path alone).
#
# usage: bench/multilink.sh            (as root)
# env:   RATES="200 100 50"  SIZE=256M  RUNS=3  DOWN_AT=3  SKIP_BUILD=1  KEEP=1  OUT=path.json
#        MPTCP=0 skips the MPTCP rows; BASE=0 skips the rows without RTT (and the
#        path-down rows), i.e. runs only the RTT rows.
#        RTTS="2 20 80" (ms; "" skips the RTT rows)  RTT_MODE=auto|tbf|netem
#
# RTT rows: the same transfers (each path alone with socat, gateway over
# path 1 alone, gateway 3 links, MPTCP) at each RTT in RTTS, on a second
# topology where a router namespace R sits between A and B on every path
# (10.88.i.1 -A- R -B- 10.98.i.2) and R's two egresses are shaped. With
# netem (RTT_MODE=netem, or auto when the kernel has it): netem delay RTT/2
# on both egresses with the tbf (latency 25ms) as its child. Without netem
# (auto on this kernel): tbf rate R burst R*1ms latency RTT, i.e. a
# drop-tail queue of rate x RTT (+1 ms of burst) that a saturating flow
# fills, so the delay is queueing delay, not a fixed one. The shaping has to
# be on a router: on the sender's own egress, TCP small queues keep ~1 ms in
# the qdisc and the queue never fills (tried: 3-5 ms under load whatever the
# latency). The RTT actually seen is measured with ping (every 0.1 s over
# each path in use, during each transfer) and printed next to every row.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "run as root (network namespaces, tc)"
for t in ip tc; do command -v $t > /dev/null || die "missing $t (iproute2)"; done
read -r -a RATE <<< "${RATES:-200 100 50}"
SIZE=${SIZE:-256M}
RUNS=${RUNS:-3}
DOWN_AT=${DOWN_AT:-3}
MPTCP=${MPTCP:-1}
BASE=${BASE:-1}
read -r -a RTT_LIST <<< "${RTTS-2 20 80}"
RTT_MODE=${RTT_MODE:-auto}
NA=gwmlA$$
NB=gwmlB$$
NR=gwmlR$$
BNET=10.88 # B's addresses: 10.88.i.2 directly, 10.98.i.2 behind the router
PORT=7878

need_pkg() { # command package
  command -v "$1" > /dev/null && return 0
  log "installing $2 (for $1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" > /dev/null 2>&1 ||
    (apt-get update -qq > /dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" > /dev/null 2>&1) ||
    die "cannot install $2"
}
need_pkg socat socat
if [ "${#RTT_LIST[@]}" -gt 0 ]; then need_pkg ping iputils-ping; fi
if [ "$MPTCP" = 1 ]; then need_pkg mptcpize mptcpd; fi

setup_work gateway-multilink
build_gateway
topo_down() {
  ip netns del "$NA" 2> /dev/null || true
  ip netns del "$NB" 2> /dev/null || true
  ip netns del "$NR" 2> /dev/null || true
}
trap 'cleanup; topo_down' EXIT

ina() { ip netns exec "$NA" "$@"; }
inb() { ip netns exec "$NB" "$@"; }

# Fresh namespaces and paths; $1 = "mptcp" to announce B's other addresses.
topo_up() {
  local i
  topo_down
  ip netns add "$NA"
  ip netns add "$NB"
  for n in "$NA" "$NB"; do
    ip -n "$n" link set lo up
    ip netns exec "$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip netns exec "$n" sysctl -qw net.mptcp.enabled=1 2> /dev/null || true
  done
  for i in 1 2 3; do
    ip link add "ml${i}a$$" netns "$NA" type veth peer name "ml${i}b$$" netns "$NB"
    ip -n "$NA" addr add "10.88.$i.1/24" dev "ml${i}a$$"
    ip -n "$NB" addr add "10.88.$i.2/24" dev "ml${i}b$$"
    ip -n "$NA" link set "ml${i}a$$" up
    ip -n "$NB" link set "ml${i}b$$" up
    tc -n "$NA" qdisc add dev "ml${i}a$$" root tbf rate "${RATE[i - 1]}mbit" burst 64kb latency 25ms
    tc -n "$NB" qdisc add dev "ml${i}b$$" root tbf rate "${RATE[i - 1]}mbit" burst 64kb latency 25ms
    # cubic, as the peers were measured with (a netns default may be bbr)
    ip -n "$NA" route add "10.88.$i.2/32" dev "ml${i}a$$" congctl cubic
    ip -n "$NB" route add "10.88.$i.1/32" dev "ml${i}b$$" congctl cubic
  done
  if [ "${1:-}" = mptcp ]; then
    ip -n "$NA" mptcp limits set subflow 4 add_addr_accepted 4
    ip -n "$NB" mptcp limits set subflow 4 add_addr_accepted 4
    for i in 2 3; do ip -n "$NB" mptcp endpoint add "10.88.$i.2" dev "ml${i}b$$" signal; done
  fi
  for i in 1 2 3; do
    for n in "$NA:a" "$NB:b"; do
      until ip -n "${n%%:*}" -br link show dev "ml${i}${n##*:}$$" | grep -q ' UP '; do sleep 0.05; done
    done
  done
  BNET=10.88
}

# Does this kernel have netem? (tried in a throwaway namespace)
have_netem() {
  local ns=gwmlN$$ r=1
  ip netns add "$ns" 2> /dev/null || return 1
  tc -n "$ns" qdisc add dev lo root netem delay 1ms 2> /dev/null && r=0
  ip netns del "$ns" 2> /dev/null || true
  return "$r"
}

# The RTT topology: A - R - B on each path, R's egresses shaped ($1 = RTT
# ms); MPTCP endpoints as in topo_up mptcp. Sets BNET=10.98.
topo_rtt_up() {
  local rtt=$1 i n rate burst
  topo_down
  for n in "$NA" "$NB" "$NR"; do
    ip netns add "$n"
    ip -n "$n" link set lo up
    ip netns exec "$n" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    ip netns exec "$n" sysctl -qw net.mptcp.enabled=1 2> /dev/null || true
  done
  ip netns exec "$NR" sysctl -qw net.ipv4.ip_forward=1
  for i in 1 2 3; do
    rate=${RATE[i - 1]}
    ip link add "ml${i}a$$" netns "$NA" type veth peer name "mr${i}a$$" netns "$NR"
    ip link add "ml${i}b$$" netns "$NB" type veth peer name "mr${i}b$$" netns "$NR"
    ip -n "$NA" addr add "10.88.$i.1/24" dev "ml${i}a$$"
    ip -n "$NR" addr add "10.88.$i.254/24" dev "mr${i}a$$"
    ip -n "$NR" addr add "10.98.$i.254/24" dev "mr${i}b$$"
    ip -n "$NB" addr add "10.98.$i.2/24" dev "ml${i}b$$"
    for n in "$NA:ml${i}a$$" "$NB:ml${i}b$$" "$NR:mr${i}a$$" "$NR:mr${i}b$$"; do ip -n "${n%%:*}" link set "${n#*:}" up; done
    burst=$((rate * 125)) # 1 ms at the rate, in bytes
    [ "$burst" -ge 3100 ] || burst=3100
    for n in "mr${i}a$$" "mr${i}b$$"; do
      if [ "$RTT_HOW" = netem ]; then
        tc -n "$NR" qdisc add dev "$n" root handle 1: netem delay "$(awk -v r="$rtt" 'BEGIN{print r/2}')ms" limit 100000
        tc -n "$NR" qdisc add dev "$n" parent 1:1 handle 10: tbf rate "${rate}mbit" burst 64kb latency 25ms
      else
        tc -n "$NR" qdisc add dev "$n" root tbf rate "${rate}mbit" burst "$burst" latency "${rtt}ms"
      fi
    done
    ip -n "$NA" route add "10.98.$i.2/32" via "10.88.$i.254" dev "ml${i}a$$" congctl cubic
    ip -n "$NB" route add "10.88.$i.1/32" via "10.98.$i.254" dev "ml${i}b$$" congctl cubic
  done
  ip -n "$NA" mptcp limits set subflow 4 add_addr_accepted 4
  ip -n "$NB" mptcp limits set subflow 4 add_addr_accepted 4
  for i in 2 3; do ip -n "$NB" mptcp endpoint add "10.98.$i.2" dev "ml${i}b$$" signal; done
  for i in 1 2 3; do
    for n in "$NA:ml${i}a$$" "$NB:ml${i}b$$" "$NR:mr${i}a$$" "$NR:mr${i}b$$"; do
      until ip -n "${n%%:*}" -br link show dev "${n#*:}" | grep -q ' UP '; do sleep 0.05; done
    done
  done
  BNET=10.98
}

# ping B over each path in $1 ("1 2 3") every 0.1 s from A until ping_stop.
PINGS=()
ping_start() {
  local i
  PINGS=()
  for i in $1; do
    bg_start ip netns exec "$NA" ping -n -i 0.1 "$BNET.$i.2" > "$WORK/ping.$i" 2>&1
    PINGS+=("$i:$BG_LAST")
  done
}
# Stop them; sets PING_RES to "path:median/p90/lost%" per path (ms).
PING_RES=""
ping_stop() {
  local p out=()
  for p in "${PINGS[@]}"; do
    kill -INT "${p#*:}" 2> /dev/null || true
    wait "${p#*:}" 2> /dev/null || true
    bg_forget "${p#*:}"
    out+=("${p%%:*}:$(awk '/icmp_seq=/ {n++; for (k = 1; k <= NF; k++) if ($k ~ /^time=/) {sub("time=", "", $k); print $k}}
        / packets transmitted/ {print "#", $1, $4}' "$WORK/ping.${p%%:*}" | python3 -c '
import sys, statistics
v = []; tx = rx = 0
for l in sys.stdin:
    f = l.split()
    if f[0] == "#": tx, rx = int(f[1]), int(f[2])
    else: v.append(float(f[0]))
v.sort()
if not v: print("nan/nan/100"); sys.exit()
print("%.2f/%.2f/%.0f" % (statistics.median(v), v[min(len(v) - 1, int(0.9 * len(v)))], 100 * (tx - rx) / tx if tx else 0))')")
  done
  PINGS=()
  PING_RES="${out[*]}"
}

wait_listen_ns() { # ns port
  local i
  for ((i = 0; i < 400; i++)); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2> /dev/null | grep -q . && return 0
    sleep 0.05
  done
  die "nothing listens on port $2 in $1"
}

BYTES=$(size_bytes "$SIZE")
SRC=$WORK/src.bin
make_file "$SRC" "$BYTES"
SRC_SHA=$(file_hash "$SRC")
RES=$WORK/results.tsv
: > "$RES"
rec() { printf '%s\n' "$(IFS=$'\t'; echo "$*")" >> "$RES"; }

# A tiny receiver that keeps listening (MPTCP joins need the listener) and
# writes one connection to a file; --mptcp makes it an MPTCP socket.
SINK=$WORK/sink.py
cat > "$SINK" << 'EOF'
import socket, sys
proto = 262 if sys.argv[1] == "mptcp" else 0
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[2])))
s.listen(8)
c, _ = s.accept()
with open(sys.argv[3], "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        f.write(b)
EOF

# socat A -> B over $1 (address), "tcp" or "mptcp"; prints wall seconds or FAIL.
socat_xfer() {
  local addr=$1 proto=$2 dst=$WORK/dst.bin wrap=() t0 t1 r
  [ "$proto" = mptcp ] && wrap=(mptcpize run)
  rm -f "$dst"
  bg_start ip netns exec "$NB" python3 "$SINK" "$proto" 5400 "$dst" 2> "$WORK/sink.err"
  r=$BG_LAST
  wait_listen_ns "$NB" 5400
  t0=$(now)
  local rc=0 rrc=0
  ina "${wrap[@]}" socat -u OPEN:"$SRC" TCP:"$addr":5400 2> "$WORK/socat.err" || rc=$?
  wait "$r" 2> /dev/null || rrc=$?
  bg_forget "$r"
  t1=$(now)
  if [ "$(file_hash "$dst")" = "$SRC_SHA" ]; then
    secs "$t0" "$t1"
  else
    echo FAIL
    log "$proto socat to $addr failed: socat rc=$rc, sink rc=$rrc, received $(stat -c %s "$dst" 2> /dev/null || echo 0) B; $(tail -n 3 "$WORK/socat.err" "$WORK/sink.err" 2> /dev/null | tr '\n' ' ')"
  fi
}

# gateway A -> B over the paths in $1 ("1 2 3"); $2 = path to set down at
# DOWN_AT s (or empty). Prints "wall_s bytes1 bytes2 bytes3" or FAIL.
gw_xfer() {
  local paths=$1 down=${2:-} sa=$WORK/sa sb=$WORK/sb in=$WORK/in to=() t0 t1 s out rep i
  rm -rf "$sa" "$sb" "$in"
  trust_pair "$GW" "$sa" "$sb"
  bg_start ip netns exec "$NB" "$GW" -q --state "$sb" serve --dir "$in" --listen "tcp:0.0.0.0:$PORT" --no-mdns
  s=$BG_LAST
  wait_listen_ns "$NB" "$PORT"
  for i in $paths; do to+=(--to "tcp:$BNET.$i.2:$PORT"); done
  out=$WORK/send.json
  t0=$(now)
  local cut="" mon=""
  if [ -n "$down" ]; then
    (sleep "$DOWN_AT" && ip -n "$NA" link set "ml${down}a$$" down) &
    cut=$!
    # Progress as the receiver sees it: the bytes written into its part
    # file (allocated blocks of the sparse file), every 50 ms.
    (while :; do
       printf '%s %s\n' "$(now)" "$(stat -c '%b %B' "$in"/*.gateway-part 2> /dev/null | awk '{print $1 * $2}')"
       sleep 0.05
     done) > "$WORK/progress.txt" 2> /dev/null &
    mon=$!
  fi
  ina "$GW" -q --state "$sa" send "$SRC" "${to[@]}" --json > "$out" || true
  t1=$(now)
  if [ -n "$cut" ]; then wait "$cut" 2> /dev/null || true; fi
  if [ -n "$mon" ]; then
    kill "$mon" 2> /dev/null || true
    wait "$mon" 2> /dev/null || true
    # The longest stretch before the send ended in which less than 1 MiB
    # reached the receiver's disk: a stall, whatever the links did.
    # Only stretches ending after the path went down count (the start of
    # any transfer is handshakes and the first round trip).
    STALL=$(awk -v end="$t1" -v from="$(awk -v a="$t0" -v d="$DOWN_AT" 'BEGIN{printf "%.3f", a+d}')" \
      'BEGIN { n = 0 } $2 != "" && $1 <= end { t[n] = $1; b[n] = $2; n++ }
      END { best = 0; j = 0
            for (i = 0; i < n; i++) {
              while (b[i] - b[j] >= 1048576) j++
              if (t[i] >= from && t[i] - t[j] > best) best = t[i] - t[j]
            }
            printf "%.2f", best }' "$WORK/progress.txt")
    log "longest stall with path $down down (< 1 MiB written by the receiver): ${STALL}s"
  fi
  bg_stop "$s" 5 || true
  bg_forget "$s"
  rep=$(tail -n 1 "$out")
  if [ "$(file_hash "$in/src.bin" 2> /dev/null)" != "$SRC_SHA" ]; then
    echo FAIL
    return
  fi
  printf '%s %s\n' "$(secs "$t0" "$t1")" "$(printf '%s' "$rep" | python3 -c '
import json,sys
r=json.load(sys.stdin); by={l["selector"].split(":")[1]: l["bytes"] for l in r["links"]}
print(" ".join(str(by.get("%s.%d.2" % (sys.argv[1], i), 0)) for i in (1,2,3)))' "$BNET")"
}

log "paths ${RATE[*]} Mbit/s (tbf both ends), file $SIZE, $RUNS runs, sender gateway $GW"
if [ "$BASE" = 1 ]; then
  topo_up
  for run in $(seq 1 "$RUNS"); do
    for i in 1 2 3; do
      w=$(socat_xfer "10.88.$i.2" tcp)
      rec socat "path$i" "$run" "$w"
      log "run $run: socat path$i alone: ${w}s"
    done
    r=$(gw_xfer "1 2 3")
    rec gateway all3 "$run" "$r"
    log "run $run: gateway 3 links: $r"
    r=$(gw_xfer "1")
    rec gateway path1 "$run" "$r"
    log "run $run: gateway path1 alone: $r"
  done

  if [ "$MPTCP" = 1 ]; then
    topo_up mptcp
    for run in $(seq 1 "$RUNS"); do
      w=$(socat_xfer 10.88.1.2 mptcp)
      rec mptcp all3 "$run" "$w"
      log "run $run: MPTCP (signal) over 3 paths: ${w}s"
    done
fi

topo_up
for down in 1 3; do
  r=$(gw_xfer "1 2 3" "$down")
  rec gateway "down$down" 1 "$r"
  log "gateway, path $down set down at ${DOWN_AT}s: $r"
  topo_up
done
fi

RTT_HOW=""
if [ "${#RTT_LIST[@]}" -gt 0 ]; then
  case $RTT_MODE in
    tbf | netem) RTT_HOW=$RTT_MODE ;;
    auto) if have_netem; then RTT_HOW=netem; else RTT_HOW=tbf; fi ;;
    *) die "RTT_MODE must be auto, tbf or netem" ;;
  esac
  for rtt in "${RTT_LIST[@]}"; do
    topo_rtt_up "$rtt"
    ping_start "1 2 3"
    sleep 2
    ping_stop
    rec idle "rtt$rtt" 1 - "$PING_RES"
    log "RTT $rtt ms ($RTT_HOW): idle ping median/p90/lost% per path: $PING_RES"
    for run in $(seq 1 "$RUNS"); do
      for i in 1 2 3; do
        ping_start "$i"
        w=$(socat_xfer "$BNET.$i.2" tcp)
        ping_stop
        rec socat "rtt$rtt:path$i" "$run" "$w" "$PING_RES"
        log "RTT $rtt run $run: socat path$i alone: ${w}s; loaded ping $PING_RES"
      done
      ping_start 1
      r=$(gw_xfer 1)
      ping_stop
      rec gateway "rtt$rtt:path1" "$run" "$r" "$PING_RES"
      log "RTT $rtt run $run: gateway path1 alone: $r; loaded ping $PING_RES"
      ping_start "1 2 3"
      r=$(gw_xfer "1 2 3")
      ping_stop
      rec gateway "rtt$rtt:all3" "$run" "$r" "$PING_RES"
      log "RTT $rtt run $run: gateway 3 links: $r; loaded ping $PING_RES"
      if [ "$MPTCP" = 1 ]; then
        ping_start "1 2 3"
        w=$(socat_xfer "$BNET.1.2" mptcp)
        ping_stop
        rec mptcp "rtt$rtt:all3" "$run" "$w" "$PING_RES"
        log "RTT $rtt run $run: MPTCP over 3 paths: ${w}s; loaded ping $PING_RES"
      fi
    done
  done
fi

# ---------- report ----------
median_of() { # kind name -> median wall seconds
  awk -F'\t' -v k="$1" -v n="$2" '$1==k && $2==n {split($4, f, " "); print f[1]}' "$RES" |
    awk '$1!="FAIL" && $1!=""' | sort -g |
    awk '{a[NR]=$1} END{ if(NR==0){print "nan"; exit} if(NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2 }'
}
mbs() { awk -v s="$1" -v b="$BYTES" 'BEGIN{ if (s=="nan") print "nan"; else printf "%.1f", b/1e6/s }'; }
S1=$(mbs "$(median_of socat path1)")
S2=$(mbs "$(median_of socat path2)")
S3=$(mbs "$(median_of socat path3)")
SUM=$(awk -v a="$S1" -v b="$S2" -v c="$S3" 'BEGIN{printf "%.1f", a+b+c}')
pct() { awk -v x="$1" -v s="${2:-$SUM}" 'BEGIN{ if (x=="nan" || s==0) print "nan"; else printf "%.1f%%", 100*x/s }'; }
loaded() { # kind name -> the ping column of its runs ("; " between runs)
  awk -F'\t' -v k="$1" -v n="$2" '$1==k && $2==n {printf "%s%s", sep, $5; sep="; "}' "$RES"
}
split_of() { # kind name -> mean byte shares of the three links
  awk -F'\t' -v k="$1" -v n="$2" '$1==k && $2==n {split($4, f, " "); t=f[2]+f[3]+f[4]; if (t>0) printf "%.0f/%.0f/%.0f ", 100*f[2]/t, 100*f[3]/t, 100*f[4]/t}' "$RES"
}
{
  if [ "$BASE" = 1 ]; then
    echo "== $SIZE over tbf paths ${RATE[*]} Mbit/s, medians of $RUNS (MB/s = 10^6 B/s; % of the sum of single paths) =="
    printf '%-40s %9s %8s  %s\n' "transfer" "MB/s" "of sum" "notes"
    for i in 1 2 3; do
      v=$(eval echo "\$S$i")
      printf '%-40s %9s %8s  %s\n' "socat, path $i alone (${RATE[i - 1]} Mbit/s)" "$v" "$(pct "$v")" ""
    done
    printf '%-40s %9s %8s  %s\n' "sum of the single paths" "$SUM" "100%" ""
    v=$(mbs "$(median_of gateway path1)")
    printf '%-40s %9s %8s  %s\n' "gateway, path 1 alone" "$v" "$(pct "$v")" "1 link"
    v=$(mbs "$(median_of gateway all3)")
    printf '%-40s %9s %8s  %s\n' "gateway, 3 links (one per path)" "$v" "$(pct "$v")" "byte split %: $(split_of gateway all3)"
    if [ "$MPTCP" = 1 ]; then
      v=$(mbs "$(median_of mptcp all3)")
      printf '%-40s %9s %8s  %s\n' "MPTCP (mptcpize socat, signal)" "$v" "$(pct "$v")" ""
    fi
    echo
    echo "-- a path set down ${DOWN_AT}s into a gateway transfer over all three --"
    printf '%-40s %9s %9s  %s\n' "scenario" "wall s" "ideal s" "byte split %"
    for down in 1 3; do
      w=$(median_of gateway "down$down")
      # ideal: full sum until DOWN_AT, then the sum without that path
      rest=$(awk -v a="$S1" -v b="$S2" -v c="$S3" -v d="$down" 'BEGIN{s=a+b+c; if(d==1)s-=a; if(d==2)s-=b; if(d==3)s-=c; printf "%.3f", s}')
      ideal=$(awk -v B="$BYTES" -v sum="$SUM" -v rest="$rest" -v t="$DOWN_AT" 'BEGIN{ done=sum*1e6*t; if (done>=B) printf "%.2f", B/1e6/sum; else printf "%.2f", t+(B-done)/1e6/rest }')
      printf '%-40s %9s %9s  %s\n' "path $down down at ${DOWN_AT}s" "$w" "$ideal" "$(split_of gateway "down$down")"
    done
  fi
  if [ -z "$RTT_HOW" ]; then echo "RTT rows: not run (RTTS empty)"; fi
  for rtt in "${RTT_LIST[@]}"; do
    echo
    if [ "$RTT_HOW" = netem ]; then
      echo "-- RTT $rtt ms: router hop, netem delay $(awk -v r="$rtt" 'BEGIN{print r/2}') ms each way + tbf (latency 25ms) --"
    else
      echo "-- RTT $rtt ms: router hop, tbf rate R burst R*1ms latency ${rtt}ms (no netem: queueing delay of a full queue, not a fixed delay) --"
    fi
    echo "   ping idle (path:median/p90/lost%, ms): $(loaded idle "rtt$rtt")"
    R1=$(mbs "$(median_of socat "rtt$rtt:path1")")
    R2=$(mbs "$(median_of socat "rtt$rtt:path2")")
    R3=$(mbs "$(median_of socat "rtt$rtt:path3")")
    RSUM=$(awk -v a="$R1" -v b="$R2" -v c="$R3" 'BEGIN{printf "%.1f", a+b+c}')
    printf '%-40s %9s %8s  %-28s %s\n' "transfer" "MB/s" "of sum" "ping under load" "notes"
    for i in 1 2 3; do
      v=$(eval echo "\$R$i")
      printf '%-40s %9s %8s  %-28s %s\n' "socat, path $i alone (${RATE[i - 1]} Mbit/s)" "$v" "$(pct "$v" "$RSUM")" "$(loaded socat "rtt$rtt:path$i")" ""
    done
    printf '%-40s %9s %8s\n' "sum of the single paths" "$RSUM" "100%"
    v=$(mbs "$(median_of gateway "rtt$rtt:path1")")
    printf '%-40s %9s %8s  %-28s %s\n' "gateway, path 1 alone" "$v" "$(pct "$v" "$RSUM")" "$(loaded gateway "rtt$rtt:path1")" "1 link"
    v=$(mbs "$(median_of gateway "rtt$rtt:all3")")
    printf '%-40s %9s %8s  %-28s %s\n' "gateway, 3 links (one per path)" "$v" "$(pct "$v" "$RSUM")" "$(loaded gateway "rtt$rtt:all3")" "byte split %: $(split_of gateway "rtt$rtt:all3")"
    if [ "$MPTCP" = 1 ]; then
      v=$(mbs "$(median_of mptcp "rtt$rtt:all3")")
      printf '%-40s %9s %8s  %-28s %s\n' "MPTCP (mptcpize socat, signal)" "$v" "$(pct "$v" "$RSUM")" "$(loaded mptcp "rtt$rtt:all3")" ""
    fi
  done
} | tee "$WORK/report.txt"

mkdir -p "$BENCH_DIR/out"
OUT=${OUT:-$BENCH_DIR/out/multilink-$(date +%Y%m%d-%H%M%S).json}
python3 - "$RES" "$OUT" << 'EOF'
import json, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
json.dump([dict({"kind": r[0], "name": r[1], "run": r[2], "result": r[3]}, **({"ping_ms_median_p90_lost_pct": r[4]} if len(r) > 4 else {}))
           for r in rows], open(sys.argv[2], "w"), indent=1)
EOF
log "results: $OUT"
