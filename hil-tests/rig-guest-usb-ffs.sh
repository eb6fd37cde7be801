#!/bin/bash
# The FunctionFS part of `hil-tests/rig.sh usb`, run in the guest by
# rig-guest-usb.sh after the CDC-ACM part (env: GW, SIZE; dummy_hcd num=2 and
# libcomposite already loaded; dummy_udc.0 holds the ACM gadget).
#
# On dummy_udc.1: the raw bulk loop (drivers/usb/examples/usb_raw: the same
# gadget identity, transfer size and queue depth as the driver, nothing else)
# both ways, then gateway over `usb:gadget:dummy_udc.1` <-> `usb:` both ways,
# a hot unplug mid-transfer (the gadget's UDC unbound for 2 s, then bound
# again), and USB + TCP at once. Each step prints a "guest: [ffs] step N/10"
# line, then its result. Appends rows to /out/result.txt and a "functionfs"
# object to /out/result.json; exits non-zero if any hash or step failed.
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
STEP=0
T_START=$(now)
step() { STEP=$((STEP + 1)); say "step $STEP/10: $*"; }

ip link set lo up   # for the TCP rows
modprobe usb_f_fs || { say "FAIL: modprobe usb_f_fs"; exit 1; }
[ -x "$RAW" ] || { say "FAIL: no raw loop binary at $RAW (cargo build --release -p gateway-usb --example usb_raw)"; exit 1; }
BYTES=$(numfmt --from=iec "${SIZE%iB}")
W=/tmp/ffs; mkdir -p "$W"
if [ -f /tmp/w/src.bin ]; then ln -sf /tmp/w/src.bin "$W/src.bin"; else head -c "$BYTES" /dev/urandom > "$W/src.bin"; fi
SHA=$(sha256sum < "$W/src.bin" | cut -d' ' -f1)
export RUST_LOG=${FFS_RUST_LOG:-gateway_usb=debug,gateway_node=info,warn}
# A send that makes no progress must not eat the whole guest TIMEOUT: allow
# 60 s plus 1 s per MB (gateway moves 2-16 MB/s here).
SEND_TIMEOUT=$((60 + BYTES / 1000000))

# raw DIR [N] (out = host -> gadget, in = gadget -> host; N bytes, default
# SIZE): the gadget role in the background, then the host role; sets RAW_MBS
# and RAW_SECS.
raw() {
  local dir=$1 n=${2:-$BYTES} gp out grc=0
  timeout 150 "$RAW" gadget --udc "$UDC" --dir "$dir" --bytes "$n" > "$W/raw-gadget.log" 2>&1 &
  gp=$!
  out=$(timeout 120 "$RAW" host --vid-pid 1d6b:0104 --dir "$dir" --bytes "$n" 2>&1) || grc=$?
  wait "$gp" || fail_step "raw $dir $n: gadget side: $(tail -n 3 "$W/raw-gadget.log" | tr '\n' ' ')"
  RAW_MBS=$(sed -n 's/.*"mb_s":\([0-9.]*\).*/\1/p' <<< "$out")
  RAW_SECS=$(sed -n 's/.*"secs":\([0-9.]*\).*/\1/p' <<< "$out")
  if [ "$grc" != 0 ] || [ -z "$RAW_MBS" ]; then
    fail_step "raw $dir $n: host side (rc=$grc): $out"
    RAW_MBS=0 RAW_SECS=0
  fi
  say "raw bulk loop $dir: $out; $(tail -n 1 "$W/raw-gadget.log")"
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
  kill -0 "$spid" 2> /dev/null || { fail_step "gateway $tag: serve exited at once: $(tail -n 5 "$d/serve.log" | tr '\n' ' ')"; GW_OK=FAIL GW_MBS=0 GW_JSON='{}'; return; }
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
  timeout "$SEND_TIMEOUT" "$GW" --trust any --state "$d/st-send" send "$W/src.bin" "${to[@]}" --json --no-mdns \
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

step "raw bulk loop host -> gadget (usb_raw, $BYTES bytes)"
raw out; RAW_OUT=$RAW_MBS RAW_OUT_S=$RAW_SECS
step "raw bulk loop gadget -> host (usb_raw, $BYTES bytes)"
raw in; RAW_IN=$RAW_MBS RAW_IN_S=$RAW_SECS
# A last transfer shorter than 256 KiB but a whole number of 512-byte
# packets: without equal transfer sizes (or a ZLP) the reader waits forever.
step "raw bulk loop, a tail on a packet boundary (1 MiB + 1536 bytes) both ways"
raw out $((1048576 + 1536)); raw in $((1048576 + 1536))
step "gateway host -> gadget: serve --listen usb:gadget:$UDC, send --to usb:"
gw host-to-gadget "usb:gadget:$UDC" -- "usb:"; GW_OUT=$GW_MBS OK_OUT=$GW_OK
step "gateway gadget -> host: serve --listen usb:, send --to usb:gadget:$UDC"
gw gadget-to-host "usb:" -- "usb:gadget:$UDC"; GW_IN=$GW_MBS OK_IN=$GW_OK
step "hot unplug: host -> gadget, the UDC unbound for 2 s once a quarter has landed"
UNPLUG=1 gw unplug "usb:gadget:$UDC" -- "usb:"; OK_UNPLUG=$GW_OK UNPLUG_JSON=$GW_JSON UNPLUG_MBS=$GW_MBS
grep -q 'link back' /out/ffs-unplug-send.err \
  || fail_step "unplug: the USB link never came back (the transfer did not need it?)"
# The same transfer over TCP on the guest's loopback: gateway's CPU ceiling
# here (under TCG, encryption and hashing cost far more than moving bytes).
step "gateway over TCP on the guest's loopback alone (its CPU ceiling here)"
gw tcp-loopback tcp:127.0.0.1:7412 -- tcp:127.0.0.1:7412; GW_TCP=$GW_MBS OK_TCP=$GW_OK
step "gateway USB + TCP at once: send --to usb: --to tcp:127.0.0.1:7411"
gw usb-and-tcp "usb:gadget:$UDC" tcp:127.0.0.1:7411 -- "usb:" tcp:127.0.0.1:7411; OK_BOTH=$GW_OK BOTH_JSON=$GW_JSON
BOTH=$(python3 -c 'import json,sys; l=json.loads(sys.argv[1]).get("links", []); print(" ".join("%s=%d" % (x["selector"], x["bytes"]) for x in l)); sys.exit(0 if len(l) == 2 and all(x["bytes"] > 0 for x in l) else 1)' "$BOTH_JSON" 2>&1) \
  || fail_step "usb+tcp: not both links carried bytes ($BOTH)"
say "usb + tcp bytes per link: $BOTH"

# The service shape: root runs `gateway usb-gadget setup --user nobody --acm`,
# then `nobody` serves the bulk link through the prepared FunctionFS mount
# (and the same gadget carries a CDC-ACM function); teardown removes it all.
step "unprivileged device end: usb-gadget setup --user nobody --acm, serve as nobody, teardown"
priv() {
  local d=$W/priv spid grc=0 got out
  rm -rf "$d"; mkdir -p "$d/recv" "$d/st"; chown -R nobody:nogroup "$d"
  out=$("$GW" usb-gadget setup --user nobody --acm 2>&1) || { fail_step "usb-gadget setup: $out"; return; }
  say "usb-gadget setup: $(head -n 1 <<< "$out")"
  setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME="$d/st" \
    "$GW" --trust any --state "$d/st" serve --dir "$d/recv" --listen "usb:gadget:$UDC?ffs=/dev/usb-ffs/gateway" --no-mdns \
    > "$d/serve.log" 2>&1 &
  spid=$!
  for _ in $(seq 50); do [ "$(cat /sys/kernel/config/usb_gadget/gateway/UDC 2> /dev/null)" = "$UDC" ] && break; sleep 0.1; done
  # The ACM part's gadget holds ttyGS0 on dummy_udc.0: ours is the second.
  ls -d /sys/kernel/config/usb_gadget/gateway/functions/acm.* > /dev/null 2>&1 && [ "$(ls /dev/ttyGS* | wc -l)" -ge 2 ] \
    || fail_step "unprivileged: no CDC-ACM function and tty beside the bulk function"
  say "unprivileged serve (uid $(stat -c %u /proc/$spid)) bound $(cat /sys/kernel/config/usb_gadget/gateway/UDC); ttys: $(ls /dev/ttyGS* /dev/ttyACM* 2> /dev/null | tr '\n' ' ')"
  timeout "$SEND_TIMEOUT" "$GW" --trust any --state "$d/st-send" send "$W/src.bin" --to usb: --json --no-mdns \
    > "$d/send.out" 2> "$d/send.err" || grc=$?
  kill "$spid" 2> /dev/null; wait "$spid" 2> /dev/null
  got=$(sha256sum < "$d/recv/src.bin" 2> /dev/null | cut -d' ' -f1)
  OK_PRIV=$([ "$got" = "$SHA" ] && [ "$grc" = 0 ] && echo ok || echo "FAIL(rc=$grc)")
  [ "$OK_PRIV" = ok ] || { fail_step "unprivileged serve: $OK_PRIV"; tail -n 10 "$d/send.err"; tail -n 10 "$d/serve.log"; }
  out=$("$GW" usb-gadget teardown 2>&1) || fail_step "usb-gadget teardown: $out"
  [ -d /sys/kernel/config/usb_gadget/gateway ] && fail_step "teardown left the gadget behind"
  grep -q functionfs /proc/mounts && grep -q /dev/usb-ffs/gateway /proc/mounts && fail_step "teardown left FunctionFS mounted"
  say "unprivileged serve: $OK_PRIV; teardown: $out"
  for f in serve.log send.err send.out; do cp "$d/$f" "/out/ffs-unprivileged-$f"; done
}
OK_PRIV=FAIL
priv

step "USB link conformance suite + mid-frame kills (drivers/usb/tests/hil.rs, GATEWAY_HIL_USB_UDC=$UDC)"
CONF_USB=skipped
if [ -n "${HIL_USB_TEST:-}" ]; then
  t0=$(now)
  if GATEWAY_HIL_USB_UDC=$UDC timeout 600 "$HIL_USB_TEST" --test-threads=1 > "$W/conf-usb.log" 2>&1; then
    CONF_USB=ok
  else
    CONF_USB=FAIL; fail_step "usb conformance: $(grep -E '^test .* FAILED|^test result' "$W/conf-usb.log" | tr '\n' ' ')"
  fi
  say "usb conformance: $CONF_USB in $(secs "$t0" "$(now)")s: $(grep -E '^test ' "$W/conf-usb.log" | sed 's/^test //' | tr '\n' ';')"
  cp "$W/conf-usb.log" /out/conf-usb.log
fi

{
  echo "== rig usb: SIZE=$SIZE over FunctionFS bulk (dummy_hcd, $UDC), transfers of $((256)) KiB x 8 in flight"
  printf '%-22s %10s %10s %6s %12s %s\n' direction raw_MB/s gw_MB/s gw/raw gw/gw-tcp-lo gateway
  printf '%-22s %10s %10s %6s %12s %s\n' "host -> gadget" "$RAW_OUT" "$GW_OUT" "$(ratio "$GW_OUT" "$RAW_OUT")" "$(ratio "$GW_OUT" "$GW_TCP")" "$OK_OUT"
  printf '%-22s %10s %10s %6s %12s %s\n' "gadget -> host" "$RAW_IN" "$GW_IN" "$(ratio "$GW_IN" "$RAW_IN")" "$(ratio "$GW_IN" "$GW_TCP")" "$OK_IN"
  echo "gateway over TCP on the guest's loopback (its CPU ceiling under TCG): $GW_TCP MB/s"
  echo "unplug (UDC unbound 2 s mid-transfer): $OK_UNPLUG; usb + tcp at once: $OK_BOTH ($BOTH)"
  echo "unprivileged device end (usb-gadget setup --user nobody --acm, serve as nobody, teardown): $OK_PRIV"
  echo "usb link conformance suite + mid-frame kills (drivers/usb/tests/hil.rs): $CONF_USB"
} >> /out/result.txt
# Into result.json beside the ACM legs (rig-guest-usb.sh wrote it first).
python3 - "$SIZE" "$BYTES" "$RAW_OUT" "$RAW_OUT_S" "$GW_OUT" "$OK_OUT" "$RAW_IN" "$RAW_IN_S" "$GW_IN" "$OK_IN" \
  "$GW_TCP" "$OK_TCP" "$OK_UNPLUG" "$UNPLUG_MBS" "$UNPLUG_JSON" "$OK_BOTH" "$BOTH_JSON" "${FAILS[*]:-}" <<'PY' || fail_step "writing result.json"
import json, sys
(size, n, raw_out, raw_out_s, gw_out, ok_out, raw_in, raw_in_s, gw_in, ok_in,
 gw_tcp, ok_tcp, ok_unplug, unplug_mbs, unplug_json, ok_both, both_json, fails) = sys.argv[1:]
def num(x):
    try: return float(x)
    except ValueError: return None
def js(x):
    try: return json.loads(x)
    except ValueError: return None
def leg(raw, raw_s, gw, ok):
    r, g = num(raw), num(gw)
    return {"raw_mb_s": r, "raw_secs": num(raw_s), "gateway_mb_s": g,
            "gateway_over_raw": g / r if r and g is not None else None, "status": ok}
ffs = {"link": "FunctionFS bulk via dummy_hcd (dummy_udc.1)", "size": size, "bytes": int(n),
       "host_to_gadget": leg(raw_out, raw_out_s, gw_out, ok_out),
       "gadget_to_host": leg(raw_in, raw_in_s, gw_in, ok_in),
       "gateway_tcp_loopback": {"mb_s": num(gw_tcp), "status": ok_tcp},
       "unplug": {"status": ok_unplug, "mb_s": num(unplug_mbs), "send_json": js(unplug_json)},
       "usb_and_tcp": {"status": ok_both, "send_json": js(both_json)},
       "failed_steps": fails or None}
try:
    with open("/out/result.json") as f: doc = json.load(f)
except (OSError, ValueError):
    doc = {"rig": "usb"}
doc["functionfs"] = ffs
with open("/out/result.json", "w") as f: json.dump(doc, f, indent=1)
PY
T_FFS=$(secs "$T_START" "$(now)")
echo "FunctionFS part took ${T_FFS}s (guest wall)" >> /out/result.txt
[ "${#FAILS[@]}" = 0 ] || { say "${#FAILS[@]} failed in ${T_FFS}s: ${FAILS[*]}"; exit 1; }
say "all passed in ${T_FFS}s"
