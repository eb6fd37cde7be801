# shellcheck shell=bash
# Bluetooth bring-up for the virtual rig, as shell functions: source this file
# (bash, as root, inside the rig's qemu guest or any machine with hci_vhci)
# and call bt_up. Used by rig-guest-bt.sh; meant for any other guest script
# that needs two controllers on one radio (../shared/HIL-RIG.md).
#
#   . hil-tests/rig-bt-lib.sh
#   bt_up              # modules, btvirt -l2, both powered/connectable/bondable,
#                      # dbus-daemon --system, bluetoothd (rig config), agent
#   echo "$BT_ADDR0 $BT_ADDR1"    # hci0's and hci1's BD addresses
#   bt_power 1 off; bt_power 1 on # cut / restore hci1's links
#   bt_le_adv 1 on                # LE advertising on hci1 (connectable LE)
#   bt_down            # stop what bt_up started
#
# bt_up without bluetoothd: BT_BLUETOOTHD=0 (raw RFCOMM/L2CAP sockets need
# none). Logs go to $BT_LOG_DIR (default /tmp/bt). Each function returns
# non-zero with a "bt: ..." line on stderr when a step fails.
# Host packages: bluez bluez-test-tools dbus python3-dbus python3-gi.

BT_LOG_DIR=${BT_LOG_DIR:-/tmp/bt}
BT_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BT_PIDS=()

bt_err() { echo "bt: $*" >&2; return 1; }

# The modules HIL-RIG.md lists: the stack, the virtual HCI, RFCOMM, and the
# AF_ALG crypto bluetoothd/the kernel's SMP use (ECDH, AES-CMAC, AES-CCM).
bt_modules() {
  local m
  for m in bluetooth hci_vhci rfcomm af_alg algif_hash algif_skcipher algif_aead ecdh_generic cmac ecb ctr ccm; do
    modprobe "$m" || bt_err "modprobe $m failed" || return 1
  done
  # RFCOMM_ERTM=1 sets rfcomm's l2cap_ertm, which makes the opening end ask
  # for ERTM under RFCOMM. Between two Linux hosts (this rig) it changes
  # nothing: the kernel's RFCOMM listener is a basic-mode L2CAP socket and
  # refuses ERTM, so the channel stays basic (btmon: "PSM 3 mode Basic").
  # Off by default; kept for a peer whose acceptor takes ERTM.
  if [ "${RFCOMM_ERTM:-0}" = 1 ] && [ -w /sys/module/rfcomm/parameters/l2cap_ertm ]; then
    echo Y > /sys/module/rfcomm/parameters/l2cap_ertm
  fi
  # BT_DYNDBG: kernel dynamic-debug lines for the Bluetooth stack, ';'-separated
  # (e.g. "func rfcomm_recv_disc +p; func l2cap_conn_del +p"), into dmesg.
  if [ -n "${BT_DYNDBG:-}" ]; then
    mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug
    local q qs
    IFS=';' read -ra qs <<< "$BT_DYNDBG"
    for q in "${qs[@]}"; do echo "$q" > /sys/kernel/debug/dynamic_debug/control || bt_err "dynamic debug '$q' refused"; done
  fi
}

# btmgmt quits before the kernel answers when stdin is not a terminal, and
# then `power on` may not apply: give it one (HIL-RIG.md). (Its input must
# end: with an open one btmgmt stays interactive and never exits.)
bt_mgmt() { script -qec "timeout 20 btmgmt $*" /dev/null < /dev/null | tr -d '\r'; }

# bt_addr INDEX -> the controller's BD address
bt_addr() { bt_mgmt --index "$1" info | awk '$1 == "addr" {print $2; exit}'; }

# bt_settings INDEX -> its "current settings" line
bt_settings() { bt_mgmt --index "$1" info | sed -n 's/^[[:space:]]*current settings: //p' | head -n 1; }

# btvirt -l2: hci0 and hci1, BR/EDR + LE, on one virtual radio.
bt_btvirt() {
  mkdir -p "$BT_LOG_DIR"
  btvirt -l2 > "$BT_LOG_DIR/btvirt.log" 2>&1 &
  BT_BTVIRT_PID=$!
  BT_PIDS+=("$BT_BTVIRT_PID")
  local i
  for i in $(seq 100); do
    [ -e /sys/class/bluetooth/hci0 ] && [ -e /sys/class/bluetooth/hci1 ] && return 0
    sleep 0.1
  done
  bt_err "btvirt -l2 made no hci0 + hci1 ($(ls /sys/class/bluetooth 2>&1); $(tail -n 3 "$BT_LOG_DIR/btvirt.log"))"
}

# bt_power INDEX on|off
bt_power() {
  local i
  bt_mgmt --index "$1" power "$2" > /dev/null
  for i in $(seq 40); do
    case " $(bt_settings "$1") " in
      *" powered "*) [ "$2" = on ] && return 0 ;;
      *) [ "$2" = off ] && return 0 ;;
    esac
    bt_mgmt --index "$1" power "$2" > /dev/null
    sleep 0.5
  done
  bt_err "hci$1: power $2 did not apply; btmgmt info: $(bt_mgmt --index "$1" info 2>&1 | tr '\n' ' ')"
}

# bt_ready INDEX: powered, connectable, bondable, SSP on (just-works pairing
# answered by the kernel when neither side asks for MITM).
bt_ready() {
  local s
  bt_mgmt --index "$1" ssp on > /dev/null
  bt_mgmt --index "$1" bondable on > /dev/null
  bt_mgmt --index "$1" connectable on > /dev/null
  bt_power "$1" on || return 1
  bt_mgmt --index "$1" connectable on > /dev/null
  s=$(bt_settings "$1")
  case " $s " in
    *" connectable "*) ;;
    *) bt_err "hci$1 not connectable: $s"; return 1 ;;
  esac
}

# bt_le_adv INDEX on|off: LE advertising through mgmt (excludes bluetoothd's
# advertising manager, HIL-RIG.md).
bt_le_adv() { bt_mgmt --index "$1" advertising "$2" > /dev/null; }

# The system bus, for bluetoothd, bluer's Session and btleplug.
bt_dbus() {
  mkdir -p /run/dbus "$BT_LOG_DIR"
  [ -S /run/dbus/system_bus_socket ] && return 0
  dbus-daemon --system --nofork --nopidfile > "$BT_LOG_DIR/dbus.log" 2>&1 &
  BT_PIDS+=("$!")
  local i
  for i in $(seq 50); do [ -S /run/dbus/system_bus_socket ] && return 0; sleep 0.1; done
  bt_err "dbus-daemon --system: no socket ($(tail -n 3 "$BT_LOG_DIR/dbus.log"))"
}

# bluetoothd with the rig's config: just-works re-pairing always allowed
# (later connects after a scan need it, HIL-RIG.md), always pairable.
bt_bluetoothd() {
  mkdir -p "$BT_LOG_DIR"
  cat > "$BT_LOG_DIR/main.conf" << 'EOF'
[General]
JustWorksRepairing = always
AlwaysPairable = true
PairableTimeout = 0
DiscoverableTimeout = 0
[Policy]
AutoEnable = true
EOF
  /usr/libexec/bluetooth/bluetoothd -f "$BT_LOG_DIR/main.conf" -n ${BT_BLUETOOTHD_ARGS:-} > "$BT_LOG_DIR/bluetoothd.log" 2>&1 &
  BT_BLUETOOTHD_PID=$!
  BT_PIDS+=("$BT_BLUETOOTHD_PID")
  local i
  for i in $(seq 100); do
    dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci1 org.freedesktop.DBus.Properties.Get \
      string:org.bluez.Adapter1 string:Address > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  bt_err "bluetoothd: no /org/bluez/hci1 on D-Bus ($(tail -n 3 "$BT_LOG_DIR/bluetoothd.log"))"
}

# An auto-accepting NoInputNoOutput agent (rig-bt-agent.py), the default one.
bt_agent() {
  /usr/bin/python3 "$BT_LIB_DIR/rig-bt-agent.py" > "$BT_LOG_DIR/agent.log" 2>&1 &
  BT_AGENT_PID=$!
  BT_PIDS+=("$BT_AGENT_PID")
  local i
  for i in $(seq 100); do grep -q 'agent: ready' "$BT_LOG_DIR/agent.log" && return 0; sleep 0.1; done
  bt_err "agent did not register ($(tail -n 3 "$BT_LOG_DIR/agent.log"))"
}

# btmon's capture of every controller into $BT_LOG_DIR/btmon.snoop (read it
# with `btmon -r FILE`), for a link that drops.
bt_btmon() {
  mkdir -p "$BT_LOG_DIR"
  btmon -w "$BT_LOG_DIR/btmon.snoop" > /dev/null 2>&1 &
  BT_PIDS+=("$!")
}

# Everything: sets BT_ADDR0, BT_ADDR1. BT_BTMON=1 also captures HCI traffic.
bt_up() {
  bt_modules || return 1
  [ "${BT_BTMON:-0}" = 1 ] && bt_btmon
  bt_btvirt || return 1
  bt_ready 0 || return 1
  bt_ready 1 || return 1
  if [ "${BT_BLUETOOTHD:-1}" != 0 ]; then
    bt_dbus || return 1
    bt_bluetoothd || return 1
    bt_agent || return 1
    # bluetoothd applies its own settings at start: make sure ours hold.
    bt_ready 0 || return 1
    bt_ready 1 || return 1
  fi
  BT_ADDR0=$(bt_addr 0) BT_ADDR1=$(bt_addr 1)
  [ -n "$BT_ADDR0" ] && [ -n "$BT_ADDR1" ] || bt_err "no addresses (hci0 '$BT_ADDR0', hci1 '$BT_ADDR1')" || return 1
  export BT_ADDR0 BT_ADDR1
}

# Stop what bt_up started (last first).
bt_down() {
  local i
  for ((i = ${#BT_PIDS[@]} - 1; i >= 0; i--)); do kill "${BT_PIDS[i]}" 2> /dev/null; done
  for ((i = ${#BT_PIDS[@]} - 1; i >= 0; i--)); do wait "${BT_PIDS[i]}" 2> /dev/null; done
  BT_PIDS=()
}

# ---------- a TCP path that can be cut (for "BT + TCP at once") ----------
# Bluetooth sockets exist only in the initial network namespace, so both
# gateway ends stay there and TCP runs over lo; tcp_cut drops every packet
# to or from PORT on lo (tc u32 filters, a silent blackhole: no RST, no FIN),
# tcp_restore removes the filters.
tcp_cut() {
  local port=$1
  modprobe cls_u32 && modprobe act_gact && modprobe sch_prio || bt_err "tc modules" || return 1
  tc qdisc add dev lo root handle 1: prio 2> /dev/null || tc qdisc replace dev lo root handle 1: prio || return 1
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport "$port" 0xffff action drop || return 1
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport "$port" 0xffff action drop || return 1
}
tcp_restore() { tc qdisc del dev lo root 2> /dev/null; return 0; }
