#!/bin/bash
# The FunctionFS part of `hil-tests/rig.sh usb`, run in the guest by
# rig-guest-usb.sh after the CDC-ACM part (env: GW, SIZE; dummy_hcd num=2 and
# libcomposite already loaded; dummy_udc.0 holds the ACM gadget).
#
# On dummy_udc.1: the raw bulk loop (drivers/usb/examples/usb_raw: the same
# gadget identity, transfer size and queue depth as the driver, nothing else)
# both ways, then gateway over `usb:gadget:dummy_udc.1` <-> `usb:` both ways,
# a hot unplug mid-transfer (the gadget's UDC unbound for 2 s, then bound
# again), and USB + TCP at once. Appends rows to /out/result.txt and
# /out/result-ffs.json; exits non-zero if any hash or step failed.
set -uo pipefail
say() { echo "guest: [ffs] $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
mbs() { awk -v n="$1" -v s="$2" 'BEGIN{ if (s > 0) printf "%.2f", n/1e6/s; else print "nan" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 > 0) printf "%.2f", a/b; else print "nan" }'; }
UDC=dummy_udc.1
RAW=${RAW:-$(dirname "$GW")/examples/usb_raw}
FAILS=()
fail_step() { say "FAIL: $*"; FAILS+=("$*"); }

ip link set lo up   # for the TCP rows
modprobe usb_f_fs || { say "FAIL: modprobe usb_f_fs"; exit 1; }
[ -x "$RAW" ] || { say "FAIL: no raw loop binary at $RAW (cargo build --release -p gateway-usb --example usb_raw)"; exit 1; }
BYTES=$(numfmt --from=iec "${SIZE%iB}")
W=/tmp/ffs; mkdir -p "$W"
[ -f /tmp/w/src.bin ] && ln -sf /tmp/w/src.bin "$W/src.bin" || head -c "$BYTES" /dev/urandom > "$W/src.bin"
SHA=$(sha256sum < "$W/src.bin" | cut -d' ' -f1)
export RUST_LOG=${FFS_RUST_LOG:-gateway_usb=debug,gateway_node=info,warn}

# raw DIR (out = host -> gadget, in = gadget -> host): sets RAW_MBS
raw() {
  local dir=$1 gp out
  "$RAW" gadget "$UDC" "$dir" "$BYTES" > "$W/raw-gadget.log" 2>&1 &
  gp=$!
  out=$(timeout 120 "$RAW" host "$dir" "$BYTES" 2>&1)
  wait "$gp" || fail_step "raw $dir gadget side: $(tail -n 3 "$W/raw-gadget.log")"
  RAW_MBS=$(sed -n 's/.*"mb_s":\([0-9.]*\).*/\1/p' <<< "$out")
  [ -n "$RAW_MBS" ] || { fail_step "raw $dir: $out"; RAW_MBS=0; }
  say "raw bulk loop $dir: $out"
}

# gw TAG LISTEN... -- TO...: serve --listen each LISTEN, send --to each TO;
# UNPLUG=1 unbinds the UDC for 2 s once a quarter of the file has landed.
# Sets GW_MBS, GW_OK, GW_JSON.
gw() {
  local tag=$1 d=$W/gw-$1 spid t0 t1 grc=0 got listen=() to=() upid=
  shift
  while [ "$1" != -- ]; do listen+=(--listen "$1"); shift; done
  shift
  for s in "$@"; do to+=(--to "$s"); done
  rm -rf "$d"; mkdir -p "$d/recv"
  "$GW" --trust any --state "$d/st-recv" serve --dir "$d/recv" "${listen[@]}" --no-mdns > "$d/serve.log" 2>&1 &
  spid=$!
  sleep 2
  # What `gateway links` says of USB, once, with the gadget up and free.
  [ "$tag" = host-to-gadget ] && "$GW" links | grep '^usb' | sed 's/^/guest: [ffs] links: /'
  t0=$(now)
  if [ -n "${UNPLUG:-}" ]; then
    # Once a quarter of the file has landed (allocated blocks of the part file).
    ( for _ in $(seq 600); do
        [ "$(du -sk "$d/recv" | cut -f1)" -ge $((BYTES / 4096)) ] && break; sleep 0.05
      done
      echo "" > /sys/kernel/config/usb_gadget/gateway/UDC
      echo "unbound $(now)"; sleep 2; echo "$UDC" > /sys/kernel/config/usb_gadget/gateway/UDC; echo "bound $(now)" ) > "$d/unplug.log" 2>&1 &
    upid=$!
  fi
  timeout 600 "$GW" --trust any --state "$d/st-send" send "$W/src.bin" "${to[@]}" --json --no-mdns \
    > "$d/send.out" 2> "$d/send.err" || grc=$?
  t1=$(now)
  [ -n "$upid" ] && wait "$upid"
  kill "$spid" 2> /dev/null; wait "$spid" 2> /dev/null
  got=$(sha256sum < "$d/recv/src.bin" 2> /dev/null | cut -d' ' -f1)
  GW_OK=$([ "$got" = "$SHA" ] && [ "$grc" = 0 ] && echo ok || echo "FAIL(rc=$grc)")
  GW_MBS=$(mbs "$BYTES" "$(secs "$t0" "$t1")")
  GW_JSON=$(tail -n 1 "$d/send.out")
  say "gateway $tag: ${GW_MBS} MB/s wall ($GW_OK); send --json: $GW_JSON"
  [ -n "$upid" ] && say "gateway $tag: $(tr '\n' ' ' < "$d/unplug.log"); $(grep -c 'link back' "$d/send.err") link(s) came back"
  if [ "$GW_OK" != ok ]; then
    fail_step "gateway $tag: $GW_OK"
    tail -n 15 "$d/send.err"; tail -n 15 "$d/serve.log"
  fi
  for f in serve.log send.err send.out; do cp "$d/$f" "/out/ffs-$tag-$f"; done
  rm -rf "$d/recv"
}

raw out; RAW_OUT=$RAW_MBS
raw in; RAW_IN=$RAW_MBS
gw host-to-gadget "usb:gadget:$UDC" -- "usb:"; GW_OUT=$GW_MBS; OK_OUT=$GW_OK
gw gadget-to-host "usb:" -- "usb:gadget:$UDC"; GW_IN=$GW_MBS; OK_IN=$GW_OK
UNPLUG=1 gw unplug "usb:gadget:$UDC" -- "usb:"; OK_UNPLUG=$GW_OK
grep -q 'link back' /out/ffs-unplug-send.err \
  || fail_step "unplug: the USB link never came back (the transfer did not need it?)"
# The same transfer over TCP on the guest's loopback: gateway's CPU ceiling
# here (under TCG, encryption and hashing cost far more than moving bytes).
gw tcp-loopback tcp:127.0.0.1:7412 -- tcp:127.0.0.1:7412; GW_TCP=$GW_MBS
gw usb-and-tcp "usb:gadget:$UDC" tcp:127.0.0.1:7411 -- "usb:" tcp:127.0.0.1:7411; OK_BOTH=$GW_OK
BOTH=$(python3 -c 'import json,sys; l=json.loads(sys.argv[1])["links"]; print(" ".join("%s=%d" % (x["selector"], x["bytes"]) for x in l)); sys.exit(0 if len(l) == 2 and all(x["bytes"] > 0 for x in l) else 1)' "$GW_JSON") \
  || fail_step "usb+tcp: not both links carried bytes ($BOTH)"
say "usb + tcp bytes per link: $BOTH"

{
  echo "== rig usb: SIZE=$SIZE over FunctionFS bulk (dummy_hcd, $UDC), transfers of $((256)) KiB x 8 in flight"
  printf '%-22s %10s %10s %6s %12s %s\n' direction raw_MB/s gw_MB/s gw/raw gw/gw-tcp-lo gateway
  printf '%-22s %10s %10s %6s %12s %s\n' "host -> gadget" "$RAW_OUT" "$GW_OUT" "$(ratio "$GW_OUT" "$RAW_OUT")" "$(ratio "$GW_OUT" "$GW_TCP")" "$OK_OUT"
  printf '%-22s %10s %10s %6s %12s %s\n' "gadget -> host" "$RAW_IN" "$GW_IN" "$(ratio "$GW_IN" "$RAW_IN")" "$(ratio "$GW_IN" "$GW_TCP")" "$OK_IN"
  echo "gateway over TCP on the guest's loopback (its CPU ceiling under TCG): $GW_TCP MB/s"
  echo "unplug (UDC unbound 2 s mid-transfer): $OK_UNPLUG; usb + tcp at once: $OK_BOTH ($BOTH)"
} >> /out/result.txt
python3 - > /out/result-ffs.json <<PY
import json
print(json.dumps({"link": "FunctionFS bulk via dummy_hcd", "size": "$SIZE",
  "host_to_gadget": {"raw_mb_s": float("$RAW_OUT" or 0), "gateway_mb_s": float("$GW_OUT" or 0), "status": "$OK_OUT"},
  "gadget_to_host": {"raw_mb_s": float("$RAW_IN" or 0), "gateway_mb_s": float("$GW_IN" or 0), "status": "$OK_IN"},
  "gateway_tcp_loopback_mb_s": float("$GW_TCP" or 0), "unplug": "$OK_UNPLUG", "usb_and_tcp": "$OK_BOTH"}, indent=1))
PY
[ "${#FAILS[@]}" = 0 ] || { say "${#FAILS[@]} failed: ${FAILS[*]}"; exit 1; }
say "all passed"
