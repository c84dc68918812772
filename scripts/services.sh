# Sourced by the project's scripts: makes Postgres and Redis reachable for the tests
# (DESIGN.md §5, "starts Postgres and Redis if none is reachable").
#
#   source scripts/services.sh
#   ensure_services      # exports TEST_DATABASE_URL and TEST_REDIS_URL
#   ...                  # run the tests
#                        # on exit, stop_services stops what ensure_services started
#
# The machine's own servers at 127.0.0.1:5432 (user postgres, no password) and
# 127.0.0.1:6379 are used when they answer. Otherwise a throwaway instance is started
# from the installed server binaries, in a `mktemp -d` directory, on a free port bound
# to 127.0.0.1 only, and stopped and removed on exit. Only what was started here is
# ever stopped.
#
# Knobs:
#   TEST_DATABASE_URL / TEST_REDIS_URL  already set: used as they are, not checked.
#   EDGE_AUTH_FORCE_THROWAWAY=1         ignore every running server (and the two
#                                       variables above) and start throwaway instances:
#                                       proves the fallback works on a machine that has
#                                       servers running, as CI does.
#
# Cleanup: ensure_services installs an EXIT trap that runs stop_services, chained in
# front of any EXIT trap already set. A caller that sets its own EXIT trap afterwards
# must call stop_services from it. INT and TERM, when not trapped already, exit the
# shell so that the EXIT trap runs.

_SERVICES_PG_DIR=""     # temp dir of the throwaway Postgres, when one was started
_SERVICES_PG_RUN=()     # how to run its binaries (as the postgres user when root)
_SERVICES_PG_BIN=""
_SERVICES_REDIS_DIR=""  # temp dir of the throwaway Redis, when one was started
_SERVICES_TRAPPED=""

_services_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
_services_fail() {
  printf '\033[31merror: %s\033[0m\n' "$*" >&2
  return 1
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
_services_free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' && return 0
  fi
  local port tries
  for tries in $(seq 1 200); do
    port=$((20000 + RANDOM % 40000))
    # A refused connection means the port is free.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  _services_fail "no free TCP port found on 127.0.0.1"
}

_services_pg_ready() { # host port
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$1" -p "$2" -U postgres >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
  fi
}

_services_redis_ping() { # host port
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h "$1" -p "$2" ping 2>/dev/null)" = PONG ]
  else
    # RESP inline command over bash's /dev/tcp when redis-cli is not installed.
    local reply
    reply=$(exec 3<>"/dev/tcp/$1/$2" && printf 'PING\r\n' >&3 && timeout 2 head -c 7 <&3) 2>/dev/null || return 1
    [ "${reply%$'\r'}" = "+PONG" ]
  fi
}

# The newest installed Postgres server's bin directory (Debian layout).
_services_pg_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/pg_ctl" ]; then
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
      dirname "$(command -v initdb)"
      return 0
    fi
    _services_fail "no Postgres to use (none reachable at 127.0.0.1:5432, or EDGE_AUTH_FORCE_THROWAWAY=1) and no server binaries (initdb, pg_ctl) are installed under /usr/lib/postgresql/*/bin: install the Debian package 'postgresql' (apt-get install postgresql), or start a server"
    return 1
  fi
  echo "$dir"
}

# Durability off by default: the data is thrown away. scripts/bench passes its own
# settings (durable, pg_stat_statements) as arguments, `-c name=value` each.
_services_start_postgres() {
  local settings="${*:--c fsync=off -c synchronous_commit=off -c full_page_writes=off}"
  local bindir dir port
  bindir=$(_services_pg_bindir) || return 1
  # initdb and postgres refuse to run as root: run them as the postgres user.
  if [ "$(id -u)" = 0 ]; then
    if ! id -u postgres >/dev/null 2>&1; then
      _services_fail "running as root and there is no 'postgres' user to run a throwaway Postgres as (initdb refuses root): install the Debian package 'postgresql', which creates it, or run as a non-root user"
      return 1
    fi
    # Under /tmp even if TMPDIR is private to root: the postgres user must reach it.
    dir=$(mktemp -d /tmp/edge-auth-pg.XXXXXX) || return 1
    chown postgres: "$dir"
    if command -v runuser >/dev/null 2>&1; then
      _SERVICES_PG_RUN=(runuser -u postgres --)
    else
      _SERVICES_PG_RUN=(_services_su_postgres)
    fi
  else
    dir=$(mktemp -d) || return 1
    _SERVICES_PG_RUN=()
  fi
  _SERVICES_PG_DIR=$dir
  _SERVICES_PG_BIN=$bindir
  port=$(_services_free_port) || return 1
  _services_log "no Postgres to use: starting a throwaway one ($bindir) on 127.0.0.1:$port in $dir"
  if ! "${_SERVICES_PG_RUN[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1; then
    cat "$dir/initdb.log" >&2
    _services_fail "initdb failed (log above)"
    return 1
  fi
  # The socket lives in the temp dir so no system directory (/var/run/postgresql) is
  # needed.
  if ! "${_SERVICES_PG_RUN[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=300 $settings" \
    start >/dev/null 2>&1; then
    cat "$dir/postgres.log" >&2 2>/dev/null || true
    _services_fail "the throwaway Postgres did not start (log above)"
    return 1
  fi
  local i
  for i in $(seq 1 100); do
    _services_pg_ready 127.0.0.1 "$port" && break
    sleep 0.1
  done
  _services_pg_ready 127.0.0.1 "$port" || {
    cat "$dir/postgres.log" >&2 2>/dev/null || true
    _services_fail "the throwaway Postgres does not answer on 127.0.0.1:$port"
    return 1
  }
  export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# `su` fallback where runuser is missing: quotes every argument for the shell.
_services_su_postgres() {
  su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
}

_services_start_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    _services_fail "no Redis to use (none reachable at 127.0.0.1:6379, or EDGE_AUTH_FORCE_THROWAWAY=1) and redis-server is not installed: install the Debian package 'redis-server' (apt-get install redis-server), or start a server"
    return 1
  fi
  local dir port i
  dir=$(mktemp -d) || return 1
  _SERVICES_REDIS_DIR=$dir
  port=$(_services_free_port) || return 1
  _services_log "no Redis to use: starting a throwaway one on 127.0.0.1:$port in $dir"
  if ! redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null 2>&1; then
    cat "$dir/redis.log" >&2 2>/dev/null || true
    _services_fail "redis-server did not start (log above)"
    return 1
  fi
  for i in $(seq 1 100); do
    _services_redis_ping 127.0.0.1 "$port" && break
    sleep 0.1
  done
  _services_redis_ping 127.0.0.1 "$port" || {
    cat "$dir/redis.log" >&2 2>/dev/null || true
    _services_fail "the throwaway Redis does not answer on 127.0.0.1:$port"
    return 1
  }
  export TEST_REDIS_URL="redis://127.0.0.1:$port"
}

# Chains stop_services in front of whatever EXIT trap is set, once.
_services_install_trap() {
  [ -n "$_SERVICES_TRAPPED" ] && return 0
  _SERVICES_TRAPPED=1
  local previous="" current
  current=$(trap -p EXIT)
  if [ -n "$current" ]; then
    # `trap -p` prints `trap -- 'command' EXIT`, quoted for reuse by eval.
    eval "set -- $current"
    previous=$3
  fi
  # shellcheck disable=SC2064 # expanded now on purpose: the previous trap's text
  trap "stop_services; $previous" EXIT
  [ -z "$(trap -p INT)" ] && trap 'exit 130' INT
  [ -z "$(trap -p TERM)" ] && trap 'exit 143' TERM
  return 0
}

# Makes Postgres and Redis reachable and exports TEST_DATABASE_URL and TEST_REDIS_URL.
ensure_services() {
  local force="${EDGE_AUTH_FORCE_THROWAWAY:-0}"
  [ "$force" = 1 ] && _services_log "EDGE_AUTH_FORCE_THROWAWAY=1: starting throwaway Postgres and Redis"
  _services_install_trap

  if [ "$force" != 1 ] && [ -n "${TEST_DATABASE_URL:-}" ]; then
    : # the caller's choice, as given
  elif [ "$force" != 1 ] && _services_pg_ready 127.0.0.1 5432; then
    export TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
  else
    _services_start_postgres || return 1
  fi

  if [ "$force" != 1 ] && [ -n "${TEST_REDIS_URL:-}" ]; then
    :
  elif [ "$force" != 1 ] && _services_redis_ping 127.0.0.1 6379; then
    export TEST_REDIS_URL="redis://127.0.0.1:6379"
  else
    _services_start_redis || return 1
  fi
  _services_log "Postgres: $TEST_DATABASE_URL, Redis: $TEST_REDIS_URL"
}

# Stops and removes only the instances ensure_services started. Safe to call twice.
stop_services() {
  if [ -n "$_SERVICES_PG_DIR" ]; then
    if [ -f "$_SERVICES_PG_DIR/data/postmaster.pid" ]; then
      "${_SERVICES_PG_RUN[@]}" "$_SERVICES_PG_BIN/pg_ctl" -D "$_SERVICES_PG_DIR/data" -m immediate -w -t 30 stop \
        >/dev/null 2>&1 || true
    fi
    rm -rf "$_SERVICES_PG_DIR"
    _SERVICES_PG_DIR=""
  fi
  if [ -n "$_SERVICES_REDIS_DIR" ]; then
    local pid
    pid=$(cat "$_SERVICES_REDIS_DIR/redis.pid" 2>/dev/null || true)
    if [ -n "$pid" ]; then
      kill "$pid" 2>/dev/null || true
      local i
      for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
    fi
    rm -rf "$_SERVICES_REDIS_DIR"
    _SERVICES_REDIS_DIR=""
  fi
}
