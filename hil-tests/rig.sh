#!/usr/bin/env bash
# The virtual hardware rig (../shared/HIL-RIG.md): a qemu guest (TCG) with a
# stock Debian kernel, the host's / read-only over 9p under a tmpfs overlay.
#
#   hil-tests/rig.sh usb            # SIZE=16M; CDC-ACM pair from dummy_hcd + libcomposite
#   SIZE=256M SKIP_BUILD=1 hil-tests/rig.sh usb
#   hil-tests/rig.sh bt             # SIZE=16M; hci0 + hci1 from hci_vhci + btvirt -l2
#
# usb: one guest holds both ends of a USB link: dummy_hcd num=2 + a configfs
# gadget with one ACM function bound to dummy_udc.0, so /dev/ttyGS0 is the
# gadget side and /dev/ttyACM0 (cdc_acm) the host side. In the guest: a raw
# copy ACM0 -> GS0 (the ceiling), then `gateway serve --listen
# serial:/dev/ttyGS0` + `gateway send FILE --to serial:/dev/ttyACM0 --json`;
# the sha256 of what landed must match. Then the bulk link: FunctionFS on
# dummy_udc.1 (rig-guest-usb-ffs.sh): the raw bulk loop (usb_raw example)
# both ways, gateway over usb:gadget:dummy_udc.1 <-> usb: both ways, a UDC
# unbind/rebind mid-transfer, USB + TCP at once. Exit 0 only if every step
# and every hash passed.
#
# bt: one guest holds both ends of a Bluetooth link (rig-guest-bt.sh, the
# bring-up in rig-bt-lib.sh): hci_vhci + `btvirt -l2` (hci0 and hci1 on one
# virtual radio), powered and connectable via btmgmt, dbus-daemon --system,
# bluetoothd (JustWorksRepairing = always) and an auto-accepting agent. The
# raw socket loop (drivers/bluez/examples/bt_raw) over RFCOMM and L2CAP
# hci0 -> hci1, then gateway over rfcomm:/l2cap: (GATEWAY_BT=0 skips),
# BT + TCP at once with each link cut in turn, and gateway over BLE (SIZE_BLE).
#
# env: SIZE (default 16M, `head -c` units), SKIP_BUILD=1, GW (gateway binary;
#      default $CARGO_TARGET_DIR/release/gateway), MEM (guest MiB, default
#      SIZE-based), TIMEOUT (s for the whole guest run; default 900, bt 1500),
#      RIG_CACHE (default target/hil-rig), REVERSE=0 (no gadget -> host
#      serial leg), FFS=0 (no FunctionFS part), SERIAL_CONFORMANCE=0 (no
#      serial conformance suite over the ACM pair), QEMU_CPU (default max);
#      bt only: GATEWAY_BT=0 (raw loops only), BT_BOTH=0 (no BT + TCP part),
#      BLE=0 (no BLE step), BT_CONFORMANCE=0 (no link conformance suites
#      over RFCOMM/L2CAP/BLE: drivers/bluez/tests/hil.rs, drivers/ble/tests/hil.rs), SIZE_BLE (default 256K), SIZE_LE (the LE
#      credit-based channel's file; default 4M), BT_RUST_LOG; BT_CONF_ONLY=1
#      (the conformance suites alone), BT_CONF_FILTER (names of the BlueZ
#      suite's tests to run), BT_CONF_REPEAT (runs of that list), BT_CONF_GAP
#      (s between its tests, default 5), BT_CONF_FRESH=0 (no adapter power
#      cycle before each test), BLE_CONF=0 (no BLE suite), BT_CONF_LOG (its RUST_LOG),
#      BT_BTMON=1 (btmon captures the HCI traffic into btmon.snoop),
#      RFCOMM_ERTM=1 (rfcomm l2cap_ertm: the opener asks for ERTM; a Linux
#      acceptor refuses it, so on the rig the channel stays basic).
# First run downloads into $RIG_CACHE: the Debian kernel package that
# linux-image-amd64 depends on (apt-get download, dpkg -x, depmod -b) and
# busybox-static; it apt-get installs qemu-system-x86, kmod and cpio if missing
# (bt: also bluez, bluez-test-tools, dbus, python3-dbus, python3-gi, iproute2).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-}
case $MODE in usb | bt) ;; *) echo "usage: $0 usb|bt" >&2; exit 2 ;; esac
CACHE=${RIG_CACHE:-$ROOT/target/hil-rig}
SIZE=${SIZE:-16M}
# bt moves 1-2 MB/s and cuts links mid-transfer: allow it longer.
TIMEOUT=${TIMEOUT:-$([ "$MODE" = bt ] && echo 1500 || echo 900)}
log() { echo "rig: $*" >&2; }
die() { echo "rig: error: $*" >&2; exit 1; }
# The rig could not be set up here (no package, no download): exit 3, which
# CI reports as skipped rather than failed.
unavailable() { echo "rig: unavailable: $*" >&2; exit 3; }

# ---------- host tools ----------
missing=()
command -v qemu-system-x86_64 > /dev/null || missing+=(qemu-system-x86)
command -v depmod > /dev/null || missing+=(kmod)   # depmod here; modprobe in the guest (host's /)
command -v cpio > /dev/null || missing+=(cpio)
if [ "$MODE" = bt ]; then
  # The guest runs the host's binaries: btvirt, btmgmt, bluetoothd,
  # dbus-daemon, tc, and the agent on Debian's python3 (with dbus and gi).
  [ -x /usr/libexec/bluetooth/bluetoothd ] && command -v btmgmt > /dev/null || missing+=(bluez)
  command -v btvirt > /dev/null || missing+=(bluez-test-tools)
  command -v dbus-daemon > /dev/null || missing+=(dbus)
  /usr/bin/python3 -c 'import dbus' 2> /dev/null || missing+=(python3-dbus)
  /usr/bin/python3 -c 'import gi' 2> /dev/null || missing+=(python3-gi)
  command -v tc > /dev/null || missing+=(iproute2)
  command -v script > /dev/null || missing+=(bsdutils)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} with apt"
  apt-cache policy qemu-system-x86 2> /dev/null | grep -q Candidate: || apt-get update -qq > /dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" > "$CACHE.apt.log" 2>&1 \
    || { mkdir -p "$CACHE"; unavailable "apt-get install ${missing[*]} failed (see $CACHE.apt.log)"; }
fi

# ---------- gateway ----------
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GW=${GW:-$CARGO_TARGET_DIR/release/gateway}
if [ "${SKIP_BUILD:-}" != 1 ]; then
  log "cargo build --release -p gateway (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  if [ "$MODE" = usb ]; then
    (cd "$ROOT" && cargo build --release -p gateway -q && cargo build --release -p gateway-usb --example usb_raw -q) || die "build failed"
  else
    (cd "$ROOT" && cargo build --release -p gateway -q && cargo build --release -p gateway-bluez --example bt_raw -q) || die "build failed"
  fi
fi
[ -x "$GW" ] || die "no gateway binary at $GW"
GW=$(readlink -f "$GW")

# ---------- hardware-in-the-loop test binaries the guest runs ----------
# (built here, release: the conformance suites over the rig's real devices)
test_exe() { # PACKAGE TEST -> path of the built test binary
  (cd "$ROOT" && cargo test --release --no-run -q -p "$1" --test "$2" --message-format=json 2> /dev/null) \
    | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]: print(m["executable"])' "$2"
}
HIL_SERIAL_TEST='' HIL_USB_TEST='' HIL_BT_TEST='' HIL_BLE_TEST=''
if [ "$MODE" = bt ] && [ "${BT_CONFORMANCE:-1}" = 1 ]; then
  HIL_BT_TEST=$(test_exe gateway-bluez hil)
  [ -x "$HIL_BT_TEST" ] || die "could not build the Bluetooth test binary (cargo test --release --no-run -p gateway-bluez --test hil)"
  HIL_BLE_TEST=$(test_exe gateway-ble hil)
  [ -x "$HIL_BLE_TEST" ] || die "could not build the BLE test binary (cargo test --release --no-run -p gateway-ble --test hil)"
fi
if [ "$MODE" = usb ]; then
  HIL_SERIAL_TEST=$(test_exe gateway-serial serial)
  [ -x "$HIL_SERIAL_TEST" ] || die "could not build the serial test binary (cargo test --release --no-run -p gateway-serial --test serial)"
  HIL_USB_TEST=$(test_exe gateway-usb hil)
  [ -x "$HIL_USB_TEST" ] || die "could not build the USB test binary (cargo test --release --no-run -p gateway-usb --test hil)"
fi

# ---------- kernel, busybox (cached) ----------
# The guest mounts fresh tmpfs on /run: what it reads from the host
# (cache, scripts, binary) must live elsewhere.
for p in "$CACHE" "$ROOT" "$GW"; do
  case $(readlink -m "$p")/ in /run/* | /dev/* | /proc/* | /sys/*) die "$p is hidden in the guest (under /run, /dev, /proc or /sys)" ;; esac
done
mkdir -p "$CACHE/dl"
if [ ! -f "$CACHE/kernel.ok" ]; then
  kpkg() { apt-cache depends linux-image-amd64 2> /dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
  KPKG=$(kpkg)
  [ -n "$KPKG" ] || { log "apt-get update (no package lists)"; apt-get update -qq > /dev/null 2>&1; KPKG=$(kpkg); }
  [ -n "$KPKG" ] || unavailable "apt-cache depends linux-image-amd64 named no kernel package"
  log "downloading $KPKG and busybox-static into $CACHE/dl"
  (cd "$CACHE/dl" && apt-get download "$KPKG" busybox-static 2> >(grep -v unsandboxed >&2)) || unavailable "apt-get download failed"
  rm -rf "$CACHE/kernel" "$CACHE/busybox"
  dpkg -x "$CACHE"/dl/linux-image-*.deb "$CACHE/kernel"
  dpkg -x "$CACHE"/dl/busybox-static_*.deb "$CACHE/busybox"
  KVER=$(ls "$CACHE/kernel/lib/modules")
  depmod -b "$CACHE/kernel" "$KVER"   # the package ships no modules.dep (its postinst makes it)
  echo "$KVER" > "$CACHE/kernel.ok"
fi
KVER=$(cat "$CACHE/kernel.ok")
KDIR=$CACHE/kernel/lib/modules/$KVER
VMLINUZ=$CACHE/kernel/boot/vmlinuz-$KVER
BUSYBOX=$CACHE/busybox/bin/busybox

# ---------- initramfs (rebuilt when this script changes) ----------
INITRD=$CACHE/initramfs-$KVER.cpio.gz
if [ ! -f "$INITRD" ] || [ "$0" -nt "$INITRD" ]; then
  log "building $INITRD"
  IR=$CACHE/initramfs
  rm -rf "$IR"; mkdir -p "$IR"/{bin,dev,proc,sys,ro,rw,newroot,mods}
  cp "$BUSYBOX" "$IR/bin/busybox"
  # The modules that reach the root, with their dependencies, in modules.dep order.
  order=()
  add_mod() { # path relative to KDIR
    local p=$1 d line deps
    for d in "${order[@]}"; do [ "$d" = "$p" ] && return 0; done
    line=$(grep "^$p:" "$KDIR/modules.dep") || die "$p not in modules.dep"
    deps=${line#*:}
    local rev=() x
    for x in $deps; do rev=("$x" "${rev[@]}"); done
    for x in "${rev[@]}"; do add_mod "$x"; done
    order+=("$p")
  }
  for m in virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci 9pnet 9pnet_virtio netfs fscache 9p overlay; do
    p=$(awk -F: -v m="$m" '{n=$1; sub(/.*\//, "", n); sub(/\.ko.*$/, "", n); gsub(/-/, "_", n); if (n==m) {print $1; exit}}' "$KDIR/modules.dep")
    if [ -z "$p" ]; then grep -qw "$m" "$KDIR/modules.builtin" && continue; die "module $m not found"; fi
    add_mod "$p"
  done
  : > "$IR/mods/order"
  for p in "${order[@]}"; do cp "$KDIR/$p" "$IR/mods/"; basename "$p" >> "$IR/mods/order"; done
  cat > "$IR/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "init: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 host /ro || { echo "init: 9p mount failed"; sh; }
mount -t tmpfs -o size=90% tmpfs /rw; mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work /newroot || { echo "init: overlay failed"; sh; }
for d in proc sys dev; do mount --move /$d /newroot/$d; done
STAGE2=$(sed -n 's/.*rig.stage2=\([^ ]*\).*/\1/p' /newroot/proc/cmdline)
exec switch_root /newroot /bin/bash "$STAGE2"
EOF
  chmod +x "$IR/init"
  (cd "$IR" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
fi

# ---------- run ----------
RUN=$CACHE/run
rm -rf "$RUN"; mkdir -p "$RUN"
cat > "$RUN/env" <<EOF
KVER=$KVER
KDIR=$KDIR
GW=$GW
SIZE=$SIZE
MODE=$MODE
REVERSE=${REVERSE:-1}
FFS=${FFS:-1}
HIL_SERIAL_TEST=$HIL_SERIAL_TEST
SERIAL_CONFORMANCE=${SERIAL_CONFORMANCE:-1}
HIL_USB_TEST=$HIL_USB_TEST
HIL_BT_TEST=$HIL_BT_TEST
HIL_BLE_TEST=$HIL_BLE_TEST
GATEWAY_BT=${GATEWAY_BT:-1}
BT_CONF_SKIP=${BT_CONF_SKIP-l2cap_le}
BT_CONF_FILTER=${BT_CONF_FILTER:-}
BT_CONF_REPEAT=${BT_CONF_REPEAT:-1}
BT_CONF_GAP=${BT_CONF_GAP:-5}
BT_CONF_FRESH=${BT_CONF_FRESH:-1}
BT_CONF_ONLY=${BT_CONF_ONLY:-0}
BT_CONF_LOG=${BT_CONF_LOG:-}
BLE_CONF=${BLE_CONF:-1}
BT_BTMON=${BT_BTMON:-0}
RFCOMM_ERTM=${RFCOMM_ERTM:-0}
BT_DYNDBG="${BT_DYNDBG:-}"
BT_BOTH=${BT_BOTH:-1}
BLE=${BLE:-1}
SIZE_BLE=${SIZE_BLE:-256K}
SIZE_LE=${SIZE_LE:-4M}
BT_RUST_LOG=${BT_RUST_LOG:-}
EOF
BYTES=$(numfmt --from=iec "${SIZE%iB}")
MEM=${MEM:-$((1024 + 4 * BYTES / 1048576))}
log "booting $KVER (TCG, ${MEM} MiB), SIZE=$SIZE; console log $RUN/console.log"
t0=$(date +%s.%N)
rc=0
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu "${QEMU_CPU:-max}" -smp 2 -m "$MEM" \
  -display none -monitor none -no-reboot -vga none \
  -kernel "$VMLINUZ" -initrd "$INITRD" \
  -append "console=ttyS0 quiet panic=-1 rig.stage2=$ROOT/hil-tests/rig-guest.sh" \
  -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$RUN",mount_tag=out,security_model=none \
  -serial file:"$RUN/console.log" -serial stdio \
  < /dev/null || rc=$?
t1=$(date +%s.%N)
log "guest ran $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}') s (qemu rc=$rc)"
if ! grep -q 'RIG-EXIT' "$RUN/console.log"; then
  log "no exit marker; console tail:"; tail -n 30 "$RUN/console.log" >&2
  exit 1
fi
grc=$(sed -n 's/.*RIG-EXIT \([0-9]*\).*/\1/p' "$RUN/console.log" | tail -n 1)
[ -f "$RUN/result.txt" ] && cat "$RUN/result.txt"
exit "${grc:-1}"
