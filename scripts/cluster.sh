# Sourced by the project's scripts: a throwaway Redis Cluster and an HAProxy load
# balancer, for running several origins against a sharded Redis (scripts/scale-out).
#
#   source scripts/cluster.sh
#   start_redis_cluster [NODES] [REPLICAS]
#                        # NODES (6) redis-server processes with cluster mode on,
#                        # joined by `redis-cli --cluster create` with REPLICAS (1)
#                        # replicas per primary; returns once every node reports
#                        # cluster_state:ok with all 16384 slots served and every
#                        # replica is in sync. Exports REDIS_CLUSTER_URL (the node URLs,
#                        # comma-separated: what REDIS_URL takes), REDIS_CLUSTER_PORTS
#                        # (space-separated) and REDIS_CLUSTER_DIR.
#   start_haproxy PORT HOST:PORT...
#                        # HAProxy in the foreground in its own process group, on
#                        # 127.0.0.1:PORT, balancing over the given backends with
#                        # health checks on /healthz; returns once PORT accepts
#                        # connections. Exports HAPROXY_PID and HAPROXY_CONFIG.
#   cluster_wait_ok [SECONDS]
#                        # waits until every node still answering reports
#                        # cluster_state:ok with all slots served (after a failover)
#   cluster_primary_ports  # the ports of the nodes that are primaries now, one a line
#   cluster_node_pid PORT  # the pid of the node on PORT
#   stop_cluster         # stops HAProxy and every node started here, removes the
#                        # temp dir; safe to call twice
#
# Everything lives in one `mktemp -d` directory (a subdirectory per node, the HAProxy
# configuration), listens on 127.0.0.1 only, on free ports, with persistence off: the
# data is thrown away. Only what was started here is ever stopped.
#
# Knobs:
#   REDIS_CLUSTER_BASE_PORT  nodes on BASE, BASE+1, … (cluster bus on +10000 each)
#                            instead of free ports; a taken port is an error.
#   HAPROXY_STATS_PORT       also serve HAProxy's status page on 127.0.0.1:PORT.
#   HAPROXY_LOG              where HAProxy's output and request log go (default: the
#                            temp dir).
#
# Cleanup: the first start_* call installs an EXIT trap that runs stop_cluster,
# chained in front of any EXIT trap already set (as scripts/services.sh does). A
# caller that sets its own EXIT trap afterwards must call stop_cluster from it.

_CLUSTER_DIR=""        # the temp dir, once created
_CLUSTER_PIDS=()       # redis-server pids, in the order of REDIS_CLUSTER_PORTS
_CLUSTER_TRAPPED=""
HAPROXY_PID=""

_cluster_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
_cluster_fail() {
  printf '\033[31merror: %s\033[0m\n' "$*" >&2
  return 1
}

_cluster_dir() {
  if [ -z "$_CLUSTER_DIR" ]; then
    _CLUSTER_DIR=$(mktemp -d) || return 1
  fi
}

_cluster_install_trap() {
  [ -n "$_CLUSTER_TRAPPED" ] && return 0
  _CLUSTER_TRAPPED=1
  local previous="" current
  current=$(trap -p EXIT)
  if [ -n "$current" ]; then
    # `trap -p` prints `trap -- 'command' EXIT`, quoted for reuse by eval.
    eval "set -- $current"
    previous=$3
  fi
  # shellcheck disable=SC2064 # expanded now on purpose: the previous trap's text
  trap "stop_cluster; $previous" EXIT
  [ -z "$(trap -p INT)" ] && trap 'exit 130' INT
  [ -z "$(trap -p TERM)" ] && trap 'exit 143' TERM
  return 0
}

# A refused connection means nothing listens there.
_cluster_port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# COUNT distinct TCP ports on 127.0.0.1 that nothing listens on right now. Bound all at
# once, so no port is handed out twice.
_cluster_free_ports() {
  local count=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$count" && return 0
  fi
  local ports=() port tries=0
  while [ "${#ports[@]}" -lt "$count" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 2000 ] && { _cluster_fail "no free TCP ports found on 127.0.0.1"; return 1; }
    port=$((20000 + RANDOM % 40000))
    [[ " ${ports[*]} " == *" $port "* ]] && continue
    _cluster_port_free "$port" && ports+=("$port")
  done
  echo "${ports[*]}"
}

_cluster_cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}" 2>/dev/null; }

# One field of `CLUSTER INFO` / `INFO` output: _cluster_field NAME <<<"$text"
_cluster_field() { sed -n "s/^$1:\([^[:space:]]*\).*/\1/p"; }

# 0 when the cluster is healthy. strict: every node started here answers, knows all
# the others, and each replica's link to its primary is up (a fresh cluster, before
# anyone kills a node); otherwise only the nodes still answering are asked.
_cluster_healthy() {
  local strict=$1 port info answered=0 total
  total=$(wc -w <<<"$REDIS_CLUSTER_PORTS")
  for port in $REDIS_CLUSTER_PORTS; do
    info=$(_cluster_cli "$port" cluster info) || info=""
    if [ -z "$info" ]; then
      [ "$strict" = strict ] && return 1
      continue
    fi
    answered=$((answered + 1))
    [ "$(_cluster_field cluster_state <<<"$info")" = ok ] || return 1
    [ "$(_cluster_field cluster_slots_assigned <<<"$info")" = 16384 ] || return 1
    [ "$(_cluster_field cluster_slots_ok <<<"$info")" = 16384 ] || return 1
    if [ "$strict" = strict ]; then
      [ "$(_cluster_field cluster_known_nodes <<<"$info")" = "$total" ] || return 1
      info=$(_cluster_cli "$port" info replication) || return 1
      if [ "$(_cluster_field role <<<"$info")" = slave ]; then
        [ "$(_cluster_field master_link_status <<<"$info")" = up ] || return 1
        [ "$(_cluster_field master_sync_in_progress <<<"$info")" = 0 ] || return 1
      fi
    fi
  done
  [ "$answered" -gt 0 ] || return 1
  # Right after a primary dies the others still list it as a primary (until the node
  # timeout flags it as failed), so cluster_state stays ok: also require every primary
  # serving slots to answer.
  local primaries
  primaries=$(cluster_primary_ports 2>/dev/null) || return 1
  [ -n "$primaries" ] || return 1
  for port in $primaries; do
    [ "$(_cluster_cli "$port" ping)" = PONG ] || return 1
  done
}

cluster_wait_ok() {
  local seconds=${1:-30} i
  for i in $(seq 1 $((seconds * 5))); do
    _cluster_healthy loose && return 0
    sleep 0.2
  done
  _cluster_fail "the Redis Cluster is not ok after ${seconds}s: $(_cluster_cli "${REDIS_CLUSTER_PORTS%% *}" cluster info | tr -d '\r' | head -3 | tr '\n' ' ')"
}

start_redis_cluster() {
  local nodes=${1:-6} replicas=${2:-1} ports buses port bus i dir pid real all
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    _cluster_fail "redis-server and redis-cli are needed for a Redis Cluster: install the Debian package 'redis-server' (apt-get install redis-server)"
    return 1
  fi
  if [ $((nodes % (replicas + 1))) != 0 ] || [ $((nodes / (replicas + 1))) -lt 3 ]; then
    _cluster_fail "a Redis Cluster needs at least 3 primaries: $nodes nodes with $replicas replicas each do not divide into that"
    return 1
  fi
  _cluster_install_trap
  _cluster_dir || return 1
  if [ -n "${REDIS_CLUSTER_BASE_PORT:-}" ]; then
    ports="" buses=""
    for i in $(seq 0 $((nodes - 1))); do
      port=$((REDIS_CLUSTER_BASE_PORT + i))
      for bus in "$port" $((port + 10000)); do
        _cluster_port_free "$bus" || { _cluster_fail "port $bus is already in use (REDIS_CLUSTER_BASE_PORT=$REDIS_CLUSTER_BASE_PORT; the cluster bus uses port + 10000)"; return 1; }
      done
      ports+="$port " buses+="$((port + 10000)) "
    done
  else
    # Twice as many: each node has a client port and a cluster bus port, the bus set
    # explicitly (port + 10000 may be taken, or past 65535).
    all=$(_cluster_free_ports $((nodes * 2))) || return 1
    read -r -a all <<<"$all"
    ports="${all[*]:0:nodes}" buses="${all[*]:nodes}"
  fi
  read -r -a ports <<<"$ports"
  read -r -a buses <<<"$buses"
  export REDIS_CLUSTER_PORTS="${ports[*]}"
  export REDIS_CLUSTER_DIR="$_CLUSTER_DIR"
  _cluster_log "starting a Redis Cluster of $nodes nodes ($((nodes / (replicas + 1))) primaries) on 127.0.0.1:${ports[0]}… in $_CLUSTER_DIR"
  for i in "${!ports[@]}"; do
    port=${ports[$i]}
    dir="$_CLUSTER_DIR/redis-$port"
    mkdir -p "$dir"
    # noeviction: the origin refuses any other policy (an evicted tombstone would bring
    # a revoked session back). Full coverage not required: the healthy shards keep
    # serving while one is failed over (README, "Redis Cluster"). No diskless-sync delay: replicas sync at once (the
    # default waits 5 s for more replicas to share one transfer). Its own process group, so a Ctrl-C reaches the caller
    # first and the nodes are stopped in order, after what uses them.
    setsid redis-server --port "$port" --cluster-port "${buses[$i]}" --bind 127.0.0.1 \
      --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 2000 \
      --maxmemory-policy noeviction --cluster-require-full-coverage no \
      --appendonly no --save "" --repl-diskless-sync-delay 0 \
      --dir "$dir" --logfile "$dir/redis.log" --daemonize no >/dev/null 2>&1 &
    _CLUSTER_PIDS[$i]=$!
  done
  for i in "${!ports[@]}"; do
    port=${ports[$i]}
    pid=${_CLUSTER_PIDS[$i]}
    local up=""
    for _ in $(seq 1 100); do
      [ "$(_cluster_cli "$port" ping)" = PONG ] && { up=1; break; }
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$up" ]; then
      tail -n 20 "$_CLUSTER_DIR/redis-$port/redis.log" >&2 2>/dev/null || true
      _cluster_fail "the Redis Cluster node on 127.0.0.1:$port did not start (log above)"
      return 1
    fi
    # setsid forks when the caller made it a process group leader (job control on):
    # then $! was setsid's own pid. Take the server's.
    real=$(_cluster_cli "$port" info server | tr -d '\r' | _cluster_field process_id)
    [ -n "$real" ] && _CLUSTER_PIDS[$i]=$real
  done
  local addrs=()
  for port in "${ports[@]}"; do addrs+=("127.0.0.1:$port"); done
  if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes \
    >"$_CLUSTER_DIR/create.log" 2>&1; then
    cat "$_CLUSTER_DIR/create.log" >&2
    _cluster_fail "redis-cli --cluster create failed (output above)"
    return 1
  fi
  # Slots are assigned at once; the nodes learn each other by gossip and the replicas
  # sync: wait for both, so a primary killed right after this returns fails over.
  for _ in $(seq 1 300); do
    _cluster_healthy strict && break
    sleep 0.1
  done
  if ! _cluster_healthy strict; then
    for port in "${ports[@]}"; do
      printf '%s: %s\n' "$port" "$(_cluster_cli "$port" cluster info | tr -d '\r' | head -3 | tr '\n' ' ')" >&2
    done
    _cluster_fail "the Redis Cluster did not become ok within 30 s (node logs in $_CLUSTER_DIR)"
    return 1
  fi
  local urls=()
  for port in "${ports[@]}"; do urls+=("redis://127.0.0.1:$port"); done
  REDIS_CLUSTER_URL=$(IFS=,; echo "${urls[*]}")
  export REDIS_CLUSTER_URL
  _cluster_log "Redis Cluster ok: primaries on $(cluster_primary_ports | tr '\n' ' ')"
}

cluster_primary_ports() {
  local port nodes
  for port in $REDIS_CLUSTER_PORTS; do
    nodes=$(_cluster_cli "$port" cluster nodes) || continue
    [ -n "$nodes" ] || continue
    # A line per node: id addr:port@bus flags master-id ping pong epoch link slots…
    # Primaries serving slots, not marked failed, as this node sees them.
    awk '$3 ~ /master/ && $3 !~ /fail/ && NF >= 9 { split($2, a, "[:@]"); print a[2] }' <<<"$nodes" | sort -n
    return 0
  done
  _cluster_fail "no Redis Cluster node answers"
}

cluster_node_pid() {
  local i ports
  read -r -a ports <<<"$REDIS_CLUSTER_PORTS"
  for i in "${!ports[@]}"; do
    [ "${ports[$i]}" = "$1" ] && { echo "${_CLUSTER_PIDS[$i]}"; return 0; }
  done
  _cluster_fail "no Redis Cluster node on port $1"
}

start_haproxy() {
  local port=$1 backend n=0 cfg log i
  shift
  [ "$#" -gt 0 ] || { _cluster_fail "start_haproxy PORT HOST:PORT...: no backend given"; return 1; }
  command -v haproxy >/dev/null 2>&1 || { _cluster_fail "haproxy not found: install the Debian package 'haproxy' (apt-get install haproxy)"; return 1; }
  _cluster_install_trap
  _cluster_dir || return 1
  cfg="$_CLUSTER_DIR/haproxy.cfg"
  log="${HAPROXY_LOG:-$_CLUSTER_DIR/haproxy.log}"
  {
    cat <<CFG
# Generated by scripts/cluster.sh (start_haproxy); thrown away on exit.
global
    log stdout format raw local0 info
    maxconn 4096

defaults
    mode http
    log global
    option httplog
    option dontlognull
    timeout connect 1s
    timeout client 30s
    # Above the origin's own longest wait (a login queues for a hash slot 10 s at
    # most), so a slow answer is not mistaken for a dead origin.
    timeout server 15s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 1s
    # A request an origin never answered (it was killed, or refused the connection)
    # goes to another one, twice at most. Safe for every route: a retried refresh
    # gets the same successor (the grace window), a retried logout or revocation is
    # idempotent, a retried login makes one more session.
    retries 2
    option redispatch
    retry-on conn-failure empty-response response-timeout

frontend origins_in
    bind 127.0.0.1:$port
    default_backend origins

backend origins
    balance roundrobin
    # /healthz touches no database: it says the process serves. Down after two
    # failures 500 ms apart, up again after one success.
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 1
CFG
    for backend in "$@"; do
      n=$((n + 1))
      printf '    server origin%d %s\n' "$n" "$backend"
    done
    if [ -n "${HAPROXY_STATS_PORT:-}" ]; then
      cat <<CFG

listen stats
    bind 127.0.0.1:$HAPROXY_STATS_PORT
    stats enable
    stats uri /
    stats refresh 2s
CFG
    fi
  } >"$cfg"
  if ! haproxy -c -q -f "$cfg" >"$_CLUSTER_DIR/haproxy-check.log" 2>&1; then
    cat "$_CLUSTER_DIR/haproxy-check.log" >&2
    _cluster_fail "the generated HAProxy configuration $cfg is invalid (above)"
    return 1
  fi
  # -db: foreground, no daemon. Its own process group, stopped by stop_cluster.
  setsid haproxy -db -f "$cfg" >"$log" 2>&1 &
  HAPROXY_PID=$!
  export HAPROXY_PID HAPROXY_CONFIG="$cfg"
  for i in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$HAPROXY_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -n 20 "$log" >&2
  _cluster_fail "HAProxy did not start on 127.0.0.1:$port (log above: $log)"
}

stop_haproxy() {
  [ -n "$HAPROXY_PID" ] || return 0
  kill -TERM -- "-$HAPROXY_PID" 2>/dev/null || kill -TERM "$HAPROXY_PID" 2>/dev/null || true
  wait "$HAPROXY_PID" 2>/dev/null || true
  HAPROXY_PID=""
}

# Running, not a zombie: a node killed by hand stays our unreaped child (so its pid
# cannot be reused before stop_redis_cluster reaps it), and kill -0 succeeds on it.
_cluster_running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# Stops the nodes started here (SIGTERM, then SIGKILL after 5 s), and reaps them.
stop_redis_cluster() {
  local pid i
  [ "${#_CLUSTER_PIDS[@]}" -gt 0 ] || return 0
  for pid in "${_CLUSTER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    local alive=""
    for pid in "${_CLUSTER_PIDS[@]}"; do _cluster_running "$pid" && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.1
  done
  for pid in "${_CLUSTER_PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  _CLUSTER_PIDS=()
}

stop_cluster() {
  stop_haproxy
  stop_redis_cluster
  if [ -n "$_CLUSTER_DIR" ]; then
    rm -rf "$_CLUSTER_DIR"
    _CLUSTER_DIR=""
  fi
}
