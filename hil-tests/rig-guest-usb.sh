#!/bin/bash
# The `usb` test of hil-tests/rig.sh, run inside the guest by rig-guest.sh
# (env from /out/env: GW, SIZE). A CDC-ACM gadget on dummy_udc.0: gadget side
# /dev/ttyGS0, host side /dev/ttyACM0. Raw copy ACM0 -> GS0, then gateway
# serve on GS0 / send to ACM0; writes /out/result.txt and /out/result.json.
set -uo pipefail
t_boot=$(cut -d' ' -f1 /proc/uptime)
say() { echo "guest: $*"; }
fail() { say "FAIL: $*"; echo "FAIL: $*" > /out/result.txt; exit 1; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", b-a}'; }
mbs() { awk -v n="$1" -v s="$2" 'BEGIN{ if (s > 0) printf "%.2f", n/1e6/s; else print "nan" }'; }

say "kernel $(uname -r), up ${t_boot}s; gateway $GW"
modprobe dummy_hcd num=2 || fail "modprobe dummy_hcd"
modprobe libcomposite || fail "modprobe libcomposite"
modprobe usb_f_acm || fail "modprobe usb_f_acm"
modprobe cdc_acm || fail "modprobe cdc_acm"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
say "UDCs: $(cd /sys/class/udc && echo *)"

G=/sys/kernel/config/usb_gadget/rig
mkdir "$G" || fail "configfs gadget"
cd "$G" || fail "configfs gadget"
echo 0x1d6b > idVendor   # Linux Foundation
echo 0x0104 > idProduct  # Multifunction Composite Gadget
mkdir strings/0x409
echo rig0001 > strings/0x409/serialnumber
echo gateway > strings/0x409/manufacturer
echo "gateway hil rig" > strings/0x409/product
mkdir functions/acm.usb0 || fail "acm function"
mkdir -p configs/c.1/strings/0x409
echo acm > configs/c.1/strings/0x409/configuration
ln -s functions/acm.usb0 configs/c.1/ || fail "link acm"
echo dummy_udc.0 > UDC || fail "bind UDC"
cd /
for _ in $(seq 100); do [ -c /dev/ttyACM0 ] && [ -c /dev/ttyGS0 ] && break; sleep 0.1; done
[ -c /dev/ttyACM0 ] || fail "no /dev/ttyACM0 ($(ls /dev/tty[AG]* 2>&1))"
[ -c /dev/ttyGS0 ] || fail "no /dev/ttyGS0"
t_usb=$(cut -d' ' -f1 /proc/uptime)
say "USB ready at ${t_usb}s: /dev/ttyACM0 /dev/ttyGS0"

BYTES=$(numfmt --from=iec "${SIZE%iB}")
W=/tmp/w; mkdir -p "$W"
head -c "$BYTES" /dev/urandom > "$W/src.bin"
SHA=$(sha256sum < "$W/src.bin" | cut -d' ' -f1)

# stty raw on ttyGS0 reports failure (u_serial keeps only some flags): keep
# descriptors open on both ends, set, check what matters.
exec 3<> /dev/ttyGS0 4<> /dev/ttyACM0
for t in /dev/ttyGS0 /dev/ttyACM0; do
  stty -F "$t" raw -echo -echoe -echok -icrnl -opost 2> /dev/null
  say "$t: $(stty -F "$t" -a | tr '\n' ' ' | grep -o -- '-\?echo \|-\?icanon\|-\?opost\|-\?icrnl' | tr '\n' ' ')"
done

# Bytes left queued on either end (a serve's keepalives after its sender
# exited) would be read as data by the next run: read both ends dry first.
drain() {
  local t n
  for t in /dev/ttyGS0 /dev/ttyACM0; do
    n=$(timeout 0.5 cat "$t" | wc -c)
    [ "$n" = 0 ] || say "drained $n stale bytes from $t"
  done
}

# raw FROM TO: cat > FROM, head -c N < TO; sets RAW_S RAW_OK
raw() {
  local from=$1 to=$2 t0 t1 rpid rrc sha got
  drain
  rm -f "$W/raw.bin"
  t0=$(now)
  timeout 120 head -c "$BYTES" < "$to" > "$W/raw.bin" &
  rpid=$!
  sleep 0.2   # inside the timing: a slight understatement of raw
  timeout 120 cat "$W/src.bin" > "$from"
  t1=$(now)
  # gadget -> host loses whole URBs (HIL-RIG.md): a reader that never gets
  # SIZE bytes is stopped 5 s after the writer finished and timed to then.
  for _ in $(seq 50); do kill -0 "$rpid" 2> /dev/null || break; sleep 0.1; done
  if kill -0 "$rpid" 2> /dev/null; then kill "$rpid" 2> /dev/null; wait "$rpid"; rrc=lost
  else wait "$rpid"; rrc=$?; t1=$(now); fi
  RAW_S=$(secs "$t0" "$t1")
  sha=$(sha256sum < "$W/raw.bin" | cut -d' ' -f1)
  got=$(stat -c %s "$W/raw.bin")
  RAW_OK=$([ "$sha" = "$SHA" ] && echo ok || echo "FAIL($rrc:got=$got)")
  say "raw $from -> $to: $BYTES bytes in ${RAW_S}s = $(mbs "$BYTES" "$RAW_S") MB/s ($RAW_OK)"
  rm -f "$W/raw.bin"
}

# gw TAG SERVE_DEV SEND_DEV: gateway serve --listen serial:SERVE_DEV, send
# --to serial:SEND_DEV (the file flows SEND_DEV -> SERVE_DEV); sets GW_S GW_OK
export RUST_LOG=${RUST_LOG:-gateway_serial=debug,warn}
gw() {
  local tag=$1 sdev=$2 cdev=$3 spid t0 t1 grc=0 got sha d=$W/gw-$1
  mkdir -p "$d/recv"
  drain
  "$GW" --trust any --state "$d/st-recv" serve --dir "$d/recv" --listen "serial:$sdev" --no-mdns > "$d/serve.log" 2>&1 &
  spid=$!
  holds() { local f; for f in /proc/"$spid"/fd/*; do [ "$(readlink "$f")" = "$sdev" ] && return 0; done; return 1; }
  for _ in $(seq 100); do holds && break; sleep 0.1; done
  holds || { tail -n 20 "$d/serve.log"; fail "serve did not open $sdev"; }
  t0=$(now)
  timeout 600 "$GW" --trust any --state "$d/st-send" send "$W/src.bin" --to "serial:$cdev" --json --no-mdns \
    > "$d/send.out" 2> "$d/send.err" || grc=$?
  t1=$(now)
  GW_S=$(secs "$t0" "$t1")
  kill "$spid" 2> /dev/null; wait "$spid" 2> /dev/null
  got=$d/recv/src.bin
  if [ -f "$got" ]; then sha=$(sha256sum < "$got" | cut -d' ' -f1); else sha=missing; fi
  GW_OK=$([ "$sha" = "$SHA" ] && [ "$grc" = 0 ] && echo ok || echo "FAIL(rc=$grc sha=$sha)")
  GW_JSON=$(tail -n 1 "$d/send.out")
  say "gateway send --json: $GW_JSON"
  say "gateway $cdev -> $sdev: $BYTES bytes in ${GW_S}s = $(mbs "$BYTES" "$GW_S") MB/s ($GW_OK)"
  [ "$GW_OK" = ok ] || { say "send stderr (tail):"; tail -n 15 "$d/send.err"; say "serve log (tail):"; tail -n 15 "$d/serve.log"; }
  say "serial debug lines (send + serve), by kind:"
  cat "$d/serve.log" "$d/send.err" | grep -o 'gateway_serial[^=]*' | sort | uniq -c | sort -rn | head -n 15
  grep -h 'packets dropped on this device' "$d/serve.log" "$d/send.err" | tail -n 2
  for f in serve.log send.err send.out; do cp "$d/$f" "/out/$tag-$f"; done
  rm -rf "$d/recv"
}

# host -> gadget (the direction the brief measures: send --to serial:/dev/ttyACM0)
raw /dev/ttyACM0 /dev/ttyGS0; RAW_S_HG=$RAW_S; RAW_OK_HG=$RAW_OK
gw hg /dev/ttyGS0 /dev/ttyACM0; GW_S_HG=$GW_S; GW_OK_HG=$GW_OK; GW_JSON_HG=$GW_JSON
# gadget -> host (cdc_acm drops whole URBs when its reader falls behind; the
# serial driver's retransmission has to cover it). REVERSE=0 skips it.
if [ "${REVERSE:-1}" = 1 ]; then
  raw /dev/ttyGS0 /dev/ttyACM0; RAW_S_GH=$RAW_S; RAW_OK_GH=$RAW_OK
  gw gh /dev/ttyACM0 /dev/ttyGS0; GW_S_GH=$GW_S; GW_OK_GH=$GW_OK; GW_JSON_GH=$GW_JSON
fi
# The serial link conformance suite over this same pair (drivers/serial's
# hardware-in-the-loop test; rig.sh passes the built test binary).
CONF_SERIAL=skipped
if [ -n "${HIL_SERIAL_TEST:-}" ] && [ "${SERIAL_CONFORMANCE:-1}" = 1 ]; then
  drain
  t0=$(now)
  if GATEWAY_HIL_SERIAL=/dev/ttyACM0 GATEWAY_HIL_SERIAL_PEER=/dev/ttyGS0 timeout 300 \
    "$HIL_SERIAL_TEST" hil_conformance --test-threads=1 > "$W/conf-serial.log" 2>&1; then
    CONF_SERIAL=ok
  else
    CONF_SERIAL=FAIL; tail -n 20 "$W/conf-serial.log"
  fi
  say "serial conformance suite over ttyACM0 <-> ttyGS0: $CONF_SERIAL in $(secs "$t0" "$(now)")s"
  cp "$W/conf-serial.log" /out/conf-serial.log
fi
exec 3>&- 4>&-

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 > 0) printf "%.2f", a/b; else print "nan" }'; }
row() { # label raw_s raw_ok gw_s gw_ok
  local r g
  r=$(mbs "$BYTES" "$2"); g=$(mbs "$BYTES" "$4")
  printf '%-22s %8s %8s %-10s %8s %8s %-10s %6s\n' "$1" "$2" "$r" "$3" "$4" "$g" "$5" "$(ratio "$g" "$r")"
}
{
  echo "== rig usb: SIZE=$SIZE ($BYTES bytes) over CDC-ACM (dummy_hcd + libcomposite acm), kernel $(uname -r), qemu TCG, $(nproc) vCPUs"
  echo "   guest up ${t_boot}s, USB ready at ${t_usb}s (guest uptime). MB/s = 10^6 bytes / wall s; gateway wall = send start -> exit"
  printf '%-22s %8s %8s %-10s %8s %8s %-10s %6s\n' direction raw_s raw_MB/s raw gw_s gw_MB/s gateway gw/raw
  row "ttyACM0 -> ttyGS0" "$RAW_S_HG" "$RAW_OK_HG" "$GW_S_HG" "$GW_OK_HG"
  [ "${REVERSE:-1}" = 1 ] && row "ttyGS0 -> ttyACM0" "$RAW_S_GH" "$RAW_OK_GH" "$GW_S_GH" "$GW_OK_GH"
  echo "serial link conformance suite over ttyACM0 <-> ttyGS0: $CONF_SERIAL"
} > /out/result.txt
python3 - "$BYTES" "$SIZE" "$RAW_S_HG" "$RAW_OK_HG" "$GW_S_HG" "$GW_OK_HG" "$GW_JSON_HG" \
  "${RAW_S_GH:-}" "${RAW_OK_GH:-}" "${GW_S_GH:-}" "${GW_OK_GH:-}" "${GW_JSON_GH:-}" > /out/result.json <<'PY'
import json, sys
a = sys.argv[1:]
n, size = int(a[0]), a[1]
def leg(rs, rok, gs, gok, js):
    if not rs: return None
    try: send = json.loads(js)
    except Exception: send = None
    return {"raw": {"wall_s": float(rs), "mb_per_s": n/1e6/float(rs), "status": rok},
            "gateway": {"wall_s": float(gs), "mb_per_s": n/1e6/float(gs), "status": gok, "send_json": send}}
print(json.dumps({"rig": "usb", "link": "CDC-ACM via dummy_hcd", "size": size, "bytes": n,
                  "host_to_gadget": leg(*a[2:7]), "gadget_to_host": leg(*a[7:12])}, indent=1))
PY
acm_rc=0
[ "$GW_OK_HG" = ok ] && { [ "${REVERSE:-1}" != 1 ] || [ "$GW_OK_GH" = ok ]; } && [ "$CONF_SERIAL" != FAIL ] || acm_rc=1
# Then the bulk link over FunctionFS on dummy_udc.1 (FFS=0 skips it).
ffs_rc=0
[ "${FFS:-1}" = 1 ] && { "$(dirname "$0")/rig-guest-usb-ffs.sh" || ffs_rc=$?; }
[ "$acm_rc" = 0 ] && [ "$ffs_rc" = 0 ]
