# shellcheck shell=bash
# Helpers shared by the bench/*.sh scripts (sourced, not executed).
#
# Every background process is started through bg_start and killed by PID in
# cleanup; every file lives under $WORK (a mktemp dir), removed on exit.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BG_PIDS=()
WORK=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
now() { date +%s.%N; }
# Seconds from `now` $1 to `now` $2.
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.4f", b-a}'; }
# Wait for PID $1 to exit, at most TIMEOUT s from $2 (a `now`); 0 if it did.
wait_exit() {
  while kill -0 "$1" 2> /dev/null; do
    awk -v t0="$2" -v t="$(now)" -v lim="$TIMEOUT" 'BEGIN{exit !(t - t0 > lim)}' && return 1
    sleep 0.01
  done
  return 0
}

# Start "$@" in the background; its PID lands in BG_LAST and in BG_PIDS.
bg_start() { "$@" & BG_LAST=$!; BG_PIDS+=("$BG_LAST"); }

# Forget PID $1 (it has been waited for).
bg_forget() {
  local p keep=()
  for p in "${BG_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BG_PIDS=("${keep[@]}")
}

# Stop one PID we started: SIGTERM, then SIGKILL after $2 seconds (default 5).
# Returns the exit code of the process.
bg_stop() {
  local pid=$1 grace=${2:-5} i rc=0
  kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null
  for ((i = 0; i < grace * 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || rc=$?
  return "$rc"
}

cleanup() {
  local p
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${BG_PIDS[@]}"; do bg_stop "$p" 2 || true; done
  BG_PIDS=()
  if [ -n "$WORK" ] && [ -d "$WORK" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}

# Make the work directory and install the traps. $1 = name prefix.
# Env BENCH_TMP picks its parent (default $TMPDIR or /tmp); data lands there.
setup_work() {
  WORK=$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM HUP
}

# Bytes in a size like 1G, 512M, 4G (binary units, like `head -c`), or plain bytes.
size_bytes() { numfmt --from=iec "$1"; }

# Is there room for $1 bytes (plus 5 %) under directory $2?
need_space() {
  local want=$1 dir=$2 avail
  avail=$(df -P -B1 "$dir" | awk 'NR==2 {print $4}')
  [ "$avail" -gt $((want + want / 20)) ] ||
    die "not enough space under $dir: need ~$((want / 1048576)) MiB, have $((avail / 1048576)) MiB"
}

# Build the release binary once; set GW to its path (honours CARGO_TARGET_DIR).
build_gateway() {
  local tdir=${CARGO_TARGET_DIR:-target}
  case $tdir in /*) ;; *) tdir=$ROOT/$tdir ;; esac
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release (target dir $tdir)"
    (cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
  fi
  GW=$tdir/release/gateway
  [ -x "$GW" ] || die "no binary at $GW"
}

# Incompressible test file of $2 bytes at $1: AES-CTR keystream when openssl
# is there (GB/s), else /dev/urandom.
make_file() {
  local path=$1 bytes=$2
  if command -v openssl >/dev/null; then
    openssl enc -aes-128-ctr -nosalt -pass "pass:gateway-bench-$RANDOM$RANDOM" -pbkdf2 \
      < /dev/zero 2>/dev/null | head -c "$bytes" > "$path" || true
  fi
  if [ "$(stat -c %s "$path" 2>/dev/null || echo 0)" != "$bytes" ]; then
    head -c "$bytes" /dev/urandom > "$path"
  fi
}

file_hash() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    python3 -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
  fi
}

# Percentage of file $1 resident in the page cache ("?" without fincore).
cached_pct() {
  local res size
  command -v fincore >/dev/null || { echo "?"; return; }
  res=$(fincore --bytes --noheadings --output RES "$1" 2>/dev/null | tr -d ' ') || { echo "?"; return; }
  size=$(stat -c %s "$1")
  awk -v r="$res" -v s="$size" 'BEGIN{ if (s==0 || r=="") print "?"; else printf "%.0f", 100*r/s }'
}

# Two state dirs that trust each other's node keys, as after `gateway pair`
# (setup, not timed): trust_pair GW STATE_A STATE_B
trust_pair() {
  local gw=$1 a=$2 b=$3 ida idb
  ida=$("$gw" -q --state "$a" id) || die "gateway id failed for $a"
  idb=$("$gw" -q --state "$b" id) || die "gateway id failed for $b"
  "$gw" -q --state "$a" trust "$idb" > /dev/null || die "gateway trust failed"
  "$gw" -q --state "$b" trust "$ida" > /dev/null || die "gateway trust failed"
}

# A TCP port on 127.0.0.1 that nothing listens on (checked, not reserved).
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    if command -v ss >/dev/null; then
      ss -Hltn "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    else
      (echo > "/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    fi
  done
  die "no free port found"
}

# Wait until 127.0.0.1:$1 accepts connections, without connecting to it
# (a connection would be a bogus peer for socat and gateway alike).
wait_listen() {
  local port=$1 i
  for ((i = 0; i < 400; i++)); do
    if command -v ss >/dev/null; then
      ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && return 0
    else
      grep -q ":$(printf '%04X' "$port") 00000000:0000 0A" /proc/net/tcp 2>/dev/null && return 0
    fi
    sleep 0.025
  done
  return 1
}

# Median of the numbers on stdin.
median() {
  sort -g | awk '{a[NR]=$1} END{ if (NR==0) {print "nan"; exit}
    if (NR%2) print a[(NR+1)/2]; else printf "%.6f\n", (a[NR/2]+a[NR/2+1])/2 }'
}

git_rev() { git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown; }
git_dirty() { [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo true || echo false; }

# Wait until process $1 has $2 open (a PTY a listener opened, say), at most
# $3 seconds (default 10). Returns 1 if it never did or the process died.
wait_open() {
  local pid=$1 path=$2 lim=${3:-10} i f
  for ((i = 0; i < lim * 40; i++)); do
    kill -0 "$pid" 2>/dev/null || return 1
    for f in /proc/"$pid"/fd/*; do
      [ "$(readlink "$f" 2>/dev/null)" = "$path" ] && return 0
    done
    sleep 0.025
  done
  return 1
}

# Install package $2 with apt-get if command $1 is missing (root or sudo).
need_cmd() {
  command -v "$1" >/dev/null && return 0
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  log "$1 missing; installing $2 with apt-get"
  { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$2" >/dev/null 2>&1 ||
    { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "$2" >/dev/null 2>&1; }; } ||
    die "cannot install $2 (apt-get install $2)"
}
