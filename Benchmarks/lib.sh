# Helpers the benchmark scripts share; sourced, not run:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# free_port: a TCP port free on 127.0.0.1 at this moment
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# stat PORT NAME: one figure of the memcached-protocol `stats` ("" when unreachable)
stat() {
    python3 - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
    s.sendall(b"stats\r\n")
    data = b""
    while not data.endswith(b"END\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    sys.exit(0)
for line in data.decode().splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] == sys.argv[2]:
        print(parts[2])
PY
}

# rss_mb PID: resident memory in MB ("" once the process is gone)
rss_mb() { awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null; }

# port_of LOG: the memcached port a tandemd logged it listens on
port_of() { sed -n 's/.*listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' "$1" | head -1; }
