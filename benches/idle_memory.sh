#!/usr/bin/env bash
# Resident memory of a release switchyard per idle keep-alive client, and how much comes back
# once the clients leave.
#
#   benches/idle_memory.sh [COUNT]     (default 2000; needs python3 and curl)
#   THREADS=2 benches/idle_memory.sh   worker threads (default 1)
#
# Starts two `python3 -m http.server` backends and `switchyard serve` (THREADS workers) on free
# loopback ports, then benches/idle_conns.py with COUNT clients: each makes one request and stays
# idle. Prints the proxy's VmRSS before, with the clients held, and 5 s after they closed.
# Uses $CARGO_TARGET_DIR/release/switchyard (or ./target), built first unless SKIP_BUILD=1.
set -euo pipefail
N=${1:-2000}
THREADS=${THREADS:-1}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
[[ ${SKIP_BUILD:-0} == 1 ]] || (cd "$REPO" && cargo build --release --bin switchyard >&2)
BIN=$TARGET_DIR/release/switchyard
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/www"
echo hello >"$W/www/index.html"
echo ok >"$W/www/healthz"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
B1=$(free_port); B2=$(free_port); P=$(free_port); M=$(free_port)
(cd "$W/www" && exec python3 -m http.server -b 127.0.0.1 "$B1" >/dev/null 2>&1) &
(cd "$W/www" && exec python3 -m http.server -b 127.0.0.1 "$B2" >/dev/null 2>&1) &
cat >"$W/switchyard.toml" <<TOML
[listen]
http = ["127.0.0.1:$P"]
[admin]
socket = "$W/run/admin.sock"
[metrics]
listen = "127.0.0.1:$M"
[state]
dir = "$W/state"
[server]
threads = $THREADS
[pools.blue]
backends = ["127.0.0.1:$B1"]
[pools.green]
backends = ["127.0.0.1:$B2"]
TOML
"$BIN" serve --config "$W/switchyard.toml" >"$W/log" 2>&1 &
SY=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$P/" && break; sleep 0.1; done
for _ in $(seq 20); do curl -sf -o /dev/null "http://127.0.0.1:$P/"; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$SY/status"; }
sleep 1
BASE=$(rss)
python3 "$REPO/benches/idle_conns.py" 127.0.0.1 "$P" "$N" >"$W/ready" &
IC=$!
for _ in $(seq 600); do grep -q ready "$W/ready" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$W/ready" || { echo "the clients did not connect" >&2; exit 1; }
sleep 2
HELD=$(rss)
kill -TERM "$IC"
wait "$IC" || { echo "idle_conns.py: the proxy closed held connections" >&2; exit 1; }
sleep 5
AFTER=$(rss)
echo "idle: $BASE KiB; with $N idle clients: $HELD KiB; 5 s after they closed: $AFTER KiB"
awk -v b="$BASE" -v h="$HELD" -v a="$AFTER" -v n="$N" \
	'BEGIN { printf "per idle client: %.1f KiB; after / idle: %.2f\n", (h - b) / n, a / b }'
