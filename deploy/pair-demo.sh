#!/usr/bin/env bash
# A whole Tandem pair on this machine, on loopback, to try things out:
#
#   deploy/pair-demo.sh start     # node a (primary) and node b (backup); waits until both serve
#   deploy/pair-demo.sh status    # both processes, and tandemctl status of the pair
#   deploy/pair-demo.sh stop      # SIGTERM to both (the backup first); waits until they exit
#
# Settings (environment):
#   TANDEM_DEMO_DIR       where data, configuration, logs and pids go (./tandem-demo)
#   TANDEM_A_PORT, TANDEM_A_WIRE_PORT   node a's memcached and wire ports (11211, 11311)
#   TANDEM_B_PORT, TANDEM_B_WIRE_PORT   node b's (11212, 11312)
#   TANDEM_BIN_DIR        directory with tandemd and tandemctl (default: this
#                         checkout's .build/release, else .build/debug, else
#                         it runs swift build)
#   TANDEM_DEMO_TIMEOUT   seconds to wait for start and stop (60)
#
# Each node runs from a configuration file written into TANDEM_DEMO_DIR
# (a.conf, b.conf: the format of deploy/config/*.conf) with a shared secret
# (secret), and keeps its data in TANDEM_DEMO_DIR/a and /b across restarts.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"

demo_dir="${TANDEM_DEMO_DIR:-./tandem-demo}"
a_port="${TANDEM_A_PORT:-11211}"
a_wire="${TANDEM_A_WIRE_PORT:-11311}"
b_port="${TANDEM_B_PORT:-11212}"
b_wire="${TANDEM_B_WIRE_PORT:-11312}"
timeout="${TANDEM_DEMO_TIMEOUT:-60}"

say() { printf 'pair-demo: %s\n' "$*"; }
die() { printf 'pair-demo: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-2}"
}

for port in "$a_port" "$a_wire" "$b_port" "$b_wire"; do
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || die "not a port: $port"
done

# An absolute path: the nodes and the printed commands must not depend on
# the directory this script is run from.
case "$demo_dir" in
    /*) ;;
    *) demo_dir="$PWD/${demo_dir#./}" ;;
esac

find_binaries() {
    if [ -n "${TANDEM_BIN_DIR:-}" ]; then
        bin_dir="$TANDEM_BIN_DIR"
    elif [ -x "$repo/.build/release/tandemd" ] && [ -x "$repo/.build/release/tandemctl" ]; then
        bin_dir="$repo/.build/release"
    elif [ -x "$repo/.build/debug/tandemd" ] && [ -x "$repo/.build/debug/tandemctl" ]; then
        bin_dir="$repo/.build/debug"
    else
        command -v swift >/dev/null 2>&1 || die "no tandemd built and no swift to build it; set TANDEM_BIN_DIR"
        say "building tandemd and tandemctl (swift build)"
        (cd "$repo" && swift build --product tandemd && swift build --product tandemctl) >&2 \
            || die "swift build failed"
        bin_dir="$(cd "$repo" && swift build --show-bin-path)"
    fi
    tandemd="$bin_dir/tandemd"
    tandemctl="$bin_dir/tandemctl"
    [ -x "$tandemd" ] || die "$tandemd is not an executable"
    [ -x "$tandemctl" ] || die "$tandemctl is not an executable"
}

pid_of() { # node -> pid of a running node, or nothing
    local file="$demo_dir/$1.pid" pid
    [ -f "$file" ] || return 0
    pid="$(cat "$file")"
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

wire_port_of() { if [ "$1" = a ]; then echo "$a_wire"; else echo "$b_wire"; fi; }
port_of() { if [ "$1" = a ]; then echo "$a_port"; else echo "$b_port"; fi; }

ctl() { # tandemctl with the demo's secret
    TANDEM_SECRET_FILE="$demo_dir/secret" "$tandemctl" "$@"
}

write_configuration() { # node role port wire peer-wire
    cat > "$demo_dir/$1.conf" <<EOF
# Written by deploy/pair-demo.sh: node $1 of the demo pair (deploy/config/*.conf explains each key).
node-name = "$1"
role = "$2"
listen = "127.0.0.1"
port = $3
wire-port = $4
peer = "127.0.0.1:$5"
secret-file = "$demo_dir/secret"
data-dir = "$demo_dir/$1"
memory-limit = 64
threads = 2
EOF
}

start_node() { # node
    local node="$1" pid log="$demo_dir/$1.log"
    pid="$(pid_of "$node")"
    if [ -n "$pid" ]; then
        say "node $node already runs (pid $pid)"
        return 0
    fi
    "$tandemd" --check-config --config "$demo_dir/$node.conf" >/dev/null \
        || die "node $node: the configuration $demo_dir/$node.conf is refused (see above)"
    # Detached from this shell: no terminal, its output in its log.
    nohup "$tandemd" --config "$demo_dir/$node.conf" </dev/null >>"$log" 2>&1 &
    echo $! > "$demo_dir/$node.pid"
    wait_listening "$node"
}

wait_listening() { # node: until its memcached port accepts connections
    local node="$1" port deadline=$((SECONDS + timeout))
    port="$(port_of "$node")"
    while [ "$SECONDS" -lt "$deadline" ]; do
        [ -n "$(pid_of "$node")" ] || die "node $node exited; its log ($demo_dir/$node.log) ends with:
$(tail -n 15 "$demo_dir/$node.log")"
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "node $node did not listen on 127.0.0.1:$port within ${timeout}s (log: $demo_dir/$node.log)"
}

wait_healthy() {
    local deadline=$((SECONDS + timeout))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ctl status --port "$a_wire" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    ctl status --port "$a_wire" >&2 || true
    die "the pair did not become healthy within ${timeout}s"
}

cmd_start() {
    find_binaries
    mkdir -p "$demo_dir"
    if [ ! -s "$demo_dir/secret" ]; then
        # The pair's shared secret: 32 random bytes as hex, readable by this user only.
        (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$demo_dir/secret")
    fi
    write_configuration a primary "$a_port" "$a_wire" "$b_wire"
    write_configuration b backup "$b_port" "$b_wire" "$a_wire"
    # a first: with b not up yet it takes its configured role, primary.
    start_node a
    start_node b
    wait_healthy
    say "pair running: a (pid $(pid_of a)) and b (pid $(pid_of b)), data in $demo_dir"
    cat <<EOF

  memcached:  127.0.0.1:$a_port (a)   127.0.0.1:$b_port (b)
              msm: memcachedNodes="n1:127.0.0.1:$a_port,n2:127.0.0.1:$b_port"
              printf 'set hello 0 0 5\\r\\nworld\\r\\n' | nc -q1 127.0.0.1 $a_port
              printf 'get hello\\r\\n' | nc -q1 127.0.0.1 $b_port
  tandemctl:  export TANDEM_SECRET_FILE=$demo_dir/secret TANDEM_PORT=$a_wire
              $tandemctl status                  # both nodes, one verdict
              $tandemctl sessions list
              $tandemctl promote --port $b_wire  # b leads, a follows
              $tandemctl backup $demo_dir/backup-\$(date +%s)
  logs:       $demo_dir/a.log  $demo_dir/b.log
  stop:       $0 stop

EOF
}

stop_node() { # node
    local node="$1" pid deadline=$((SECONDS + timeout))
    pid="$(pid_of "$node")"
    if [ -z "$pid" ]; then
        rm -f "$demo_dir/$node.pid"
        return 0
    fi
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || die "node $node (pid $pid) did not stop within ${timeout}s of SIGTERM"
        sleep 0.1
    done
    rm -f "$demo_dir/$node.pid"
    say "node $node stopped"
}

cmd_stop() {
    find_binaries
    # The backup first: the primary then has nobody to fail over to, and the
    # next start finds both with the same data.
    local first=b second=a role
    if [ -n "$(pid_of a)" ]; then
        role="$(ctl stats --port "$a_wire" 2>/dev/null | awk '$1 == "role" { print $2 }')" || true
        if [ "$role" = backup ]; then first=a; second=b; fi
    fi
    stop_node "$first"
    stop_node "$second"
}

cmd_status() {
    find_binaries
    local running=0 node pid
    for node in a b; do
        pid="$(pid_of "$node")"
        if [ -n "$pid" ]; then
            say "node $node runs (pid $pid): memcached 127.0.0.1:$(port_of "$node"), wire 127.0.0.1:$(wire_port_of "$node")"
            running=$((running + 1))
        else
            say "node $node is not running"
        fi
    done
    [ "$running" -gt 0 ] || exit 3
    local probe=a
    [ -n "$(pid_of a)" ] || probe=b
    ctl status --port "$(wire_port_of "$probe")"
    # 0 only when both run and the pair is healthy (tandemctl status exits 6 otherwise).
    [ "$running" -eq 2 ] || exit 3
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h|--help|help) usage 0 ;;
    *) usage 2 ;;
esac
