#!/usr/bin/env bash
# benches/compare.sh — switchyard under load, next to bare pingora, nginx and HAProxy, on loopback.
#
#   benches/compare.sh [compare]   req/s, p50/p99 and proxy CPU per request, 128 B and 16 KiB bodies
#   benches/compare.sh flips       wrk at full speed while the colour flips every 100 ms
#   benches/compare.sh reloads     wrk at full speed while switchyard, nginx and HAProxy reload
#                                  their configuration (a changed backend list) every 200 ms
#   benches/compare.sh upgrades    wrk at full speed while each replaces its own binary (the same
#                                  one) every 10 s: `ctl upgrade`, nginx USR2+WINCH+QUIT, HAProxy
#                                  master-worker USR2 (re-exec, sockets passed over its sockpair)
#   benches/compare.sh memory      resident memory idle and with 1 000 idle keep-alive clients
#   benches/compare.sh profile     perf profile of switchyard under load, its own symbols first
#   benches/compare.sh instructions  user-space instructions per request under callgrind
#                                  (deterministic where CPU time is noisy; pingora subjects only)
#   benches/compare.sh tls         the same over TLS, one certificate for all: HTTP/1.1 keep-alive
#                                  (wrk), HTTP/2 keep-alive (h2load) and full handshakes per second
#                                  (openssl s_time -new, one request per connection)
#   benches/compare.sh all         compare, flips, memory and profile, in that order
#
# Layout (2 cores): the proxy under test is pinned to core PROXY_CPU (0); wrk (1 thread, CONNS
# keep-alive connections) and the one static upstream (nginx, 1 worker) share core LOAD_CPU (1).
# On such a machine wrk's core saturates first, so req/s mostly measures the load generator: the
# proxy's CPU time per request (user+sys from /proc/<pid>/stat over all its threads and child
# processes, delta over the run / requests completed) is the figure that compares the proxies.
#
# Tables go to stdout (markdown), progress to stderr. Everything runs on 127.0.0.1 with ports
# picked free at run time, in a mktemp directory removed on exit, and every process started here
# is stopped on exit.
#
# Knobs (environment):
#   ROUNDS (5), DURATION seconds per run (6), WARMUP seconds (2), CONNS (50),
#   SUBJECTS ("switchyard bare-pingora bare-pingora-tuned nginx haproxy"; -tuned is bare pingora
#   with switchyard's ServerConf settings), BODIES ("small large"),
#   FLIP_DURATION (30 s of flipping, and as much without), FLIP_SEGMENTS (6 interleaved pairs),
#   FLIP_INTERVAL_MS (100), IDLE_CONNS (1000), PROFILE_SECONDS (10), PROFILE_DIR (keep perf.data),
#   PROFILE_SUBJECTS ("switchyard"; with two or more, e.g. "switchyard bare-pingora", it also
#   prints the first two's self time per request, symbol by symbol),
#   PROXY_CPU (0), LOAD_CPU (1), SKIP_BUILD=1 (use the binaries already built), CARGO_TARGET_DIR
#   (where they are built; default ./target), SWITCHYARD_REV (how to name the binaries' source in
#   the report when they were not built from this tree), KEEP_WORK=1 (keep the temp dir),
#   SWITCHYARD_ALT ("NAME=PATH ...": other switchyard builds, as subjects "switchyard:NAME"),
#   BARE_ALT (the same for the bare_pingora example, as subjects "bare-pingora:NAME"); the subject
#   bare-pingora-patched is the floor with the opt-in pingora patches on (patches/README.md).
#   INSTR_SUBJECTS ("switchyard bare-pingora bare-pingora-tuned"), INSTR_SECONDS (10).
#   RELOAD_SUBJECTS / UPGRADE_SUBJECTS ("switchyard nginx haproxy"), RELOAD_DURATION (20 s of
#   reloading per subject, and as much without), RELOAD_SEGMENTS (4 interleaved pairs),
#   RELOAD_INTERVAL_MS (200), UPGRADE_DURATION (40), UPGRADE_SEGMENTS (2), UPGRADE_INTERVAL (10 s).
#   TLS_SUBJECTS ("switchyard nginx haproxy"), TLS_TESTS ("h1 h2 handshakes"), TLS_KEY (ec: ECDSA
#   P-256, or rsa: RSA-2048; a self-signed certificate made with `openssl req`), H2_CONNS (10) and
#   H2_STREAMS (10 concurrent streams each) for h2load, HS_CLIENTS (8 s_time processes at once).
#   TLS=1 makes `profile` run over https (wrk, HTTP/1.1 keep-alive) with that certificate;
#   PROFILE_H2=1 with it loads with h2load (HTTP/2) instead.
# Defaults: compare ~6 min, flips ~1.5 min, memory ~1 min, profile ~1 min: ~10 min for `all`;
# instructions ~2 min, reloads ~4 min, upgrades ~5 min; tls ~5 min (ROUNDS=3 DURATION=5: ~2.5 min).
set -euo pipefail

MODE=${1:-compare}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
SUBJECTS=${SUBJECTS:-"switchyard bare-pingora bare-pingora-tuned nginx haproxy"}
BODIES=${BODIES:-"small large"}
FLIP_DURATION=${FLIP_DURATION:-30}
FLIP_INTERVAL_MS=${FLIP_INTERVAL_MS:-100}
FLIP_SEGMENTS=${FLIP_SEGMENTS:-6}
IDLE_CONNS=${IDLE_CONNS:-1000}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
PROFILE_SUBJECTS=${PROFILE_SUBJECTS:-switchyard}
INSTR_SUBJECTS=${INSTR_SUBJECTS:-"switchyard bare-pingora bare-pingora-tuned"}
INSTR_SECONDS=${INSTR_SECONDS:-10}
RELOAD_SUBJECTS=${RELOAD_SUBJECTS:-"switchyard nginx haproxy"}
RELOAD_DURATION=${RELOAD_DURATION:-20}
RELOAD_SEGMENTS=${RELOAD_SEGMENTS:-4}
RELOAD_INTERVAL_MS=${RELOAD_INTERVAL_MS:-200}
UPGRADE_SUBJECTS=${UPGRADE_SUBJECTS:-"switchyard nginx haproxy"}
UPGRADE_DURATION=${UPGRADE_DURATION:-40}
UPGRADE_SEGMENTS=${UPGRADE_SEGMENTS:-2}
UPGRADE_INTERVAL=${UPGRADE_INTERVAL:-10}
TLS_SUBJECTS=${TLS_SUBJECTS:-"switchyard nginx haproxy"}
TLS_TESTS=${TLS_TESTS:-"h1 h2 handshakes"}
TLS_KEY=${TLS_KEY:-ec}
H2_CONNS=${H2_CONNS:-10}
H2_STREAMS=${H2_STREAMS:-10}
HS_CLIENTS=${HS_CLIENTS:-8}
# Set (to the certificate's directory) when the subjects listen with TLS: `tls` mode, or TLS=1.
TLS_DIR=""
# A command prefix for the pingora subjects (valgrind, in instructions mode).
RUN_UNDER=()
PROFILE_DIR=${PROFILE_DIR:-}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SWITCHYARD=$TARGET_DIR/release/switchyard
BARE=$TARGET_DIR/release/examples/bare_pingora
# nginx and haproxy live in /usr/sbin, which a non-login root shell may not have on PATH.
PATH=$PATH:/usr/sbin:/sbin
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[compare] %s\n' "$*" >&2; }
die() { printf '[compare] error: %s\n' "$*" >&2; exit 1; }

case $MODE in
compare | flips | reloads | upgrades | memory | profile | instructions | tls | all) ;;
-h | --help | help) sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d'; exit 0 ;;
*) die "unknown mode '$MODE' (compare, flips, reloads, upgrades, memory, profile, instructions, tls or all)" ;;
esac

# --- tools -------------------------------------------------------------------------------------

# Installs the Debian packages that provide the missing commands (as root), or says what to install.
ensure_tools() {
	local -A pkg_of=([nginx]=nginx [haproxy]=haproxy [wrk]=wrk [curl]=curl [python3]=python3
		[taskset]=util-linux [ps]=procps [getconf]=libc-bin)
	if [[ $MODE == tls || ${TLS:-0} == 1 ]]; then
		pkg_of[h2load]=nghttp2-client
		pkg_of[openssl]=openssl
	fi
	local missing=() cmd
	for cmd in "${!pkg_of[@]}"; do
		command -v "$cmd" >/dev/null || missing+=("${pkg_of[$cmd]}")
	done
	[[ ${#missing[@]} -eq 0 ]] && return
	if [[ $(id -u) -ne 0 ]]; then
		die "missing packages: ${missing[*]}; install them (apt-get install -y ${missing[*]}) or run as root"
	fi
	log "installing missing packages with apt-get: ${missing[*]}"
	# The nginx and haproxy packages start their system service on install (nginx on port 80);
	# we only want the binaries, so tell invoke-rc.d not to start anything while we install.
	local policy=/usr/sbin/policy-rc.d added_policy=0
	if [[ ! -e $policy ]]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
	fi
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 || {
		[[ $added_policy -eq 1 ]] && rm -f "$policy"
		die "apt-get install failed"
	}
	[[ $added_policy -eq 1 ]] && rm -f "$policy"
	return 0
}

# perf is only needed by `profile`; it is skipped (not fatal) when it cannot be had.
ensure_perf() {
	if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
		return 0
	fi
	if [[ $(id -u) -eq 0 ]]; then
		log "perf missing or unusable; trying apt-get install -y linux-perf"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >&2 || true
	fi
	command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1
}

# True when this mode starts a bare-pingora subject (the bare_pingora example is then needed).
needs_bare() {
	local subjects
	case $MODE in
	compare | memory) subjects=$SUBJECTS ;;
	profile) subjects=$PROFILE_SUBJECTS ;;
	instructions) subjects=$INSTR_SUBJECTS ;;
	all) subjects="$SUBJECTS $PROFILE_SUBJECTS" ;;
	*) subjects="" ;; # flips, reloads, upgrades and tls: switchyard, nginx and HAProxy only
	esac
	[[ $subjects == *bare-pingora* ]]
}

build() {
	local example=()
	needs_bare && example=(--example bare_pingora)
	if [[ $SKIP_BUILD == 1 ]]; then
		[[ -x $SWITCHYARD ]] || die "SKIP_BUILD=1 but $SWITCHYARD is missing"
		[[ ${#example[@]} -eq 0 || -x $BARE ]] || die "SKIP_BUILD=1 but $BARE is missing"
		log "reusing $SWITCHYARD${example:+ and $BARE} (SKIP_BUILD=1)"
		return
	fi
	# cargo is a no-op when the binaries are up to date, so this also "reuses".
	log "building release switchyard${example:+ and the bare_pingora example} (CARGO_TARGET_DIR=$TARGET_DIR)"
	(cd "$REPO" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release --bin switchyard "${example[@]}" >&2)
}

# --- processes ---------------------------------------------------------------------------------

WORK=$(mktemp -d -t switchyard-bench.XXXXXX)
# nginx workers run as `nobody` when started by root: they must be able to read the static files.
chmod 755 "$WORK"
PIDS=()

# True while $1 runs (a zombie waiting to be reaped does not count).
alive() {
	local state
	state=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $state && $state != Z ]]
}

# Stops $1 and its children: SIGTERM to $1 (nginx's master stops its workers), then SIGKILL to
# whatever of the tree is left after 10 s, so that no worker outlives a killed master.
stop_pid() {
	local pid=$1 tree i p
	[[ -n $pid ]] || return 0
	tree=$(tree_pids "$pid")
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	for p in $tree; do
		alive "$p" && kill -KILL "$p" 2>/dev/null
	done
	wait "$pid" 2>/dev/null || true
}

# Processes started here that are not in PIDS: a daemonized nginx master and the one an nginx
# binary upgrade starts, a switchyard started by `ctl upgrade`. Each names a file under $WORK on
# its command line (nginx workers do not, and stop with their master). $1: only those naming a
# file under this directory (default: $WORK).
work_pids() {
	local d pid under=${1:-$WORK}/
	for d in /proc/[0-9]*; do
		pid=${d#/proc/}
		[[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
		{ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null | grep -qF -- "$under" && echo "$pid"
	done
	return 0
}

cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
	for pid in $(work_pids); do stop_pid "$pid"; done
	if [[ $KEEP_WORK == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$@" pinned to core $2 in the background, output to $WORK/$1.log; its pid in LAST_PID.
start() {
	local name=$1 cpu=$2
	shift 2
	taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# Drops a pid from the list cleanup stops (it has ended, or was stopped already).
forget() {
	local p keep=()
	for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	PIDS=("${keep[@]}")
}

# Stops one process started with `start` and forgets it.
stop() {
	stop_pid "$1"
	forget "$1"
}

# N distinct free loopback ports, held together while picked so none is handed out twice.
free_ports() {
	python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# Waits until GET $1 answers 200 (a proxy is only "up" once its upstream answers through it).
wait_200() {
	local url=$1 name=$2 pid=$3 i code insecure=()
	# The TLS modes' certificate is self-signed: readiness is about the answer, not the chain.
	[[ $url == https://* ]] && insecure=(--insecure)
	for ((i = 0; i < 300; i++)); do
		code=$(curl -s "${insecure[@]}" -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
		[[ $code == 200 ]] && return 0
		kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited during start-up"; }
		sleep 0.1
	done
	cat "$WORK/$name.log" >&2
	die "$name did not answer 200 on $url within 30 s (last status $code)"
}

# The pid and every descendant of it (nginx master + worker).
tree_pids() {
	ps -e -o pid=,ppid= | awk -v root="$1" '
		{ kids[$2] = kids[$2] " " $1 }
		END {
			q = root; out = ""
			while (q != "") {
				n = split(q, a, " "); q = ""
				for (i = 1; i <= n; i++) { out = out " " a[i]; q = q kids[a[i]] }
			}
			print out
		}'
}

# user+sys clock ticks of a process tree; /proc/<pid>/stat counts every thread, live or exited.
cpu_ticks() {
	local total=0 p t
	for p in $(tree_pids "$1"); do
		# Fields after the ")" that closes the command name: utime is the 12th, stime the 13th.
		t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || t=0
		total=$((total + ${t:-0}))
	done
	echo "$total"
}

# user and sys clock ticks of a process tree, as "user sys".
cpu_ticks_split() {
	local u=0 k=0 p t
	for p in $(tree_pids "$1"); do
		t=$(awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$p/stat" 2>/dev/null) || t="0 0"
		u=$((u + ${t%% *})) k=$((k + ${t##* }))
	done
	echo "$u $k"
}

# Resident memory (VmRSS, kB) of a process tree.
rss_kb() {
	local total=0 p r
	for p in $(tree_pids "$1"); do
		r=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || r=0
		total=$((total + ${r:-0}))
	done
	echo "$total"
}

# "busy idle" jiffies of one core, from /proc/stat (user..steal; idle includes iowait).
core_jiffies() {
	awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, $5 + $6 }' /proc/stat
}

# --- the upstream and the subjects -------------------------------------------------------------

# Static files: `small` is 128 B and `large` 16 KiB; green's `small` differs from blue's, so a
# flip is visible in the bodies.
make_files() {
	mkdir -p "$WORK/www/blue" "$WORK/www/green"
	{ head -c 127 /dev/zero | tr '\0' b; echo; } >"$WORK/www/blue/small"
	{ head -c 16383 /dev/zero | tr '\0' b; echo; } >"$WORK/www/blue/large"
	{ head -c 127 /dev/zero | tr '\0' g; echo; } >"$WORK/www/green/small"
	cp "$WORK/www/blue/large" "$WORK/www/green/large"
	chmod -R a+rX "$WORK/www"
}

# The one static upstream: nginx, 1 worker, on core LOAD_CPU; blue on UP_BLUE, green on UP_GREEN;
# UP_BLUE2 and UP_BLUE3 answer as blue does (the backends a reload adds and removes).
start_upstream() {
	local d=$WORK/upstream
	mkdir -p "$d"
	read -r UP_BLUE UP_GREEN UP_BLUE2 UP_BLUE3 < <(free_ports 4)
	cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    # Proxies keep their upstream connections; nginx's default (1 000 requests, then close)
    # would make every subject reconnect all the time.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_BLUE;
        root $WORK/www/blue;
        location = /healthz { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$UP_GREEN;
        root $WORK/www/green;
        location = /healthz { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$UP_BLUE2;
        listen 127.0.0.1:$UP_BLUE3;
        root $WORK/www/blue;
        location = /healthz { return 200 "ok\n"; }
    }
}
EOF
	start upstream "$LOAD_CPU" nginx -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
	UPSTREAM_PID=$LAST_PID
	wait_200 "http://127.0.0.1:$UP_BLUE/small" upstream "$UPSTREAM_PID"
	wait_200 "http://127.0.0.1:$UP_GREEN/small" upstream "$UPSTREAM_PID"
	wait_200 "http://127.0.0.1:$UP_BLUE2/small" upstream "$UPSTREAM_PID"
	wait_200 "http://127.0.0.1:$UP_BLUE3/small" upstream "$UPSTREAM_PID"
	log "upstream nginx on 127.0.0.1:$UP_BLUE (blue) and :$UP_GREEN (green), core $LOAD_CPU"
}

# Each start_<subject> sets SUBJECT_PID and SUBJECT_PORT and waits until it proxies a 200.

# switchyard's configuration for proxy port $1, metrics port $2, directory $3, blue's backends $4
# (TOML array items, e.g. "127.0.0.1:1", "127.0.0.1:2") and green's upstream port $5.
# One worker thread, like the others' one process/thread; health checks every SY_HEALTH_INTERVAL
# (1 s: the pools are ready within ~2 s); no access log (the others log nothing either).
switchyard_toml() {
	local port=$1 mport=$2 d=$3 blue=$4 green_up=$5 listen
	# With TLS_DIR: an https listener only, with the certificate every subject serves.
	listen="http = [\"127.0.0.1:$port\"]"
	[[ -n $TLS_DIR ]] && listen="http = []"$'\n'"https = [\"127.0.0.1:$port\"]"
	cat <<EOF
[listen]
$listen
[admin]
socket = "$d/run/admin.sock"
[metrics]
listen = "127.0.0.1:$mport"
[state]
dir = "$d/state"
[pools.blue]
backends = [$blue]
[pools.green]
backends = ["127.0.0.1:$green_up"]
[health]
interval = "${SY_HEALTH_INTERVAL:-1s}"
timeout = "1s"
rise = 2
[routing]
initial_primary = "blue"
[shutdown]
grace_period = "1s"
[server]
threads = 1
[log]
access = false
EOF
	if [[ -n $TLS_DIR ]]; then
		printf '[[tls.certificate]]\ncert = "%s"\nkey = "%s"\n' "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem"
	fi
}

# http, or https while the subjects listen with TLS.
scheme() { if [[ -n $TLS_DIR ]]; then echo https; else echo http; fi; }

# $1: green's upstream port (default: UP_GREEN; a backend belongs to one pool); $2: the binary;
# $3: the name (dir, log); $4: blue's backends (default: UP_BLUE alone; see switchyard_toml).
start_switchyard() {
	local green_up=${1:-$UP_GREEN} bin=${2:-$SWITCHYARD} name=${3:-switchyard} port mport
	local blue=${4:-"\"127.0.0.1:$UP_BLUE\""} d=$WORK/${3:-switchyard}
	mkdir -p "$d"
	read -r port mport < <(free_ports 2)
	switchyard_toml "$port" "$mport" "$d" "$blue" "$green_up" >"$d/switchyard.toml"
	"$bin" check -c "$d/switchyard.toml" >&2
	RUST_LOG=warn start "$name" "$PROXY_CPU" "${RUN_UNDER[@]}" "$bin" serve -c "$d/switchyard.toml"
	SUBJECT_PID=$LAST_PID SUBJECT_PORT=$port
	ADMIN_SOCKET=$d/run/admin.sock METRICS_PORT=$mport
	wait_200 "$(scheme)://127.0.0.1:$port/small" "$name" "$SUBJECT_PID"
}

# $1: "tuned" for the ServerConf settings switchyard uses (see benches/bare_pingora.rs), or "";
# $2: another build of the example (BARE_ALT), $3: the subject's name then.
start_bare_pingora() {
	local port name=${3:-bare-pingora${1:+-$1}} bin=${2:-$BARE}
	[[ -z $TLS_DIR ]] || die "$name has no TLS listener; leave it out of the TLS subjects"
	port=$(free_ports 1)
	start "$name" "$PROXY_CPU" "${RUN_UNDER[@]}" "$bin" "127.0.0.1:$port" "127.0.0.1:$UP_BLUE" 1 ${1:+"$1"}
	SUBJECT_PID=$LAST_PID SUBJECT_PORT=$port
	wait_200 "http://127.0.0.1:$port/small" "$name" "$SUBJECT_PID"
}

# nginx and HAProxy do the header work switchyard does on every request (X-Forwarded-For,
# X-Forwarded-Proto, a response header naming the pool), so the comparison is like for like.
# nginx's configuration for port $1 in directory $2, upstream ports $3 (space-separated), daemon
# $4 (off, or on for a binary upgrade: nginx ignores USR2 while its parent is the one that
# started it).
nginx_proxy_conf() {
	local port=$1 d=$2 up servers="" listen proto=http requests=1000
	listen="listen 127.0.0.1:$port;"
	for up in $3; do servers+="        server 127.0.0.1:$up;"$'\n'; done
	# With TLS_DIR: HTTP/2 or HTTP/1.1 by ALPN, TLS 1.2 and 1.3 as switchyard; nginx's defaults
	# otherwise (session tickets on, no shared session cache).
	# nginx's keepalive_requests also caps HTTP/2 connections (GOAWAY after that many streams, which
	# h2load does not reconnect from); neither switchyard's nor HAProxy's HTTP/2 has a cap, so
	# with TLS nginx has none either (its HTTP/1.1 connections then neither; switchyard's still
	# reconnect every 1 000 requests, one full handshake each).
	if [[ -n $TLS_DIR ]]; then
		proto=https
		requests=100000000
		listen="listen 127.0.0.1:$port ssl http2;
        ssl_certificate $TLS_DIR/cert.pem;
        ssl_certificate_key $TLS_DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;"
	fi
	cat <<EOF
worker_processes 1;
daemon ${4:-off};
pid $d/nginx.pid;
error_log $d/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    # Client connections: nginx's default of 1 000 requests each, as switchyard (pingora's
    # keepalive_request_limit); the upstream connections below are kept for good.
    keepalive_requests $requests;
    keepalive_timeout 300s;
    upstream app {
$servers        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }
    server {
        $listen
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $proto;
            add_header x-switchyard-pool blue;
        }
    }
}
EOF
}

# $1: upstream ports (default UP_BLUE); $2: "daemon" to let nginx daemonize (SUBJECT_PID is then
# the master from its pid file, which a binary upgrade replaces). Started by absolute path: a
# binary upgrade re-executes argv[0].
start_nginx_proxy() {
	local d=$WORK/nginx-proxy port i
	mkdir -p "$d"
	port=$(free_ports 1)
	NGINX_DIR=$d
	if [[ ${2:-} == daemon ]]; then
		nginx_proxy_conf "$port" "$d" "${1:-$UP_BLUE}" on >"$d/nginx.conf"
		taskset -c "$PROXY_CPU" "$(command -v nginx)" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" ||
			die "nginx did not start: $(cat "$d/error.log")"
		for ((i = 0; i < 100; i++)); do [[ -s $d/nginx.pid ]] && break; sleep 0.1; done
		SUBJECT_PID=$(cat "$d/nginx.pid")
	else
		nginx_proxy_conf "$port" "$d" "${1:-$UP_BLUE}" off >"$d/nginx.conf"
		start nginx "$PROXY_CPU" "$(command -v nginx)" -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
		SUBJECT_PID=$LAST_PID
	fi
	SUBJECT_PORT=$port
	wait_200 "$(scheme)://127.0.0.1:$port/small" nginx "$SUBJECT_PID"
}

# HAProxy's configuration for port $1 with upstream ports $2 (space-separated).
haproxy_cfg() {
	local port=$1 up servers="" n=0 tls="" proto=http
	for up in $2; do n=$((n + 1)); servers+="    server s$n 127.0.0.1:$up"$'\n'; done
	# With TLS_DIR: the same certificate (cert and key in one file, as HAProxy reads it), HTTP/2
	# or HTTP/1.1 by ALPN, TLS 1.2 and 1.3; HAProxy's defaults otherwise.
	if [[ -n $TLS_DIR ]]; then
		tls=" ssl crt $TLS_DIR/haproxy.pem alpn h2,http/1.1 ssl-min-ver TLSv1.2"
		proto=https
	fi
	cat <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 1s
    timeout client 300s
    timeout server 30s
    timeout http-keep-alive 300s
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$port$tls
    http-request set-header X-Forwarded-Proto $proto
    http-response set-header x-switchyard-pool blue
    default_backend app
backend app
$servers
EOF
}

# $1: upstream ports (default UP_BLUE); $2: "master-worker" for -W, the mode HAProxy's docs and
# its systemd unit use for reloads (SIGUSR2 to the master, which re-executes itself and passes the
# listening sockets to the new worker over its socketpair: the seamless reload of management.txt).
# SUBJECT_PID is the process started here (the master, which keeps its pid across reloads).
start_haproxy() {
	local d=$WORK/haproxy port mw=()
	mkdir -p "$d"
	port=$(free_ports 1)
	[[ ${2:-} == master-worker ]] && mw=(-W)
	haproxy_cfg "$port" "${1:-$UP_BLUE}" >"$d/haproxy.cfg"
	HAPROXY_DIR=$d
	start haproxy "$PROXY_CPU" "$(command -v haproxy)" "${mw[@]}" -db -f "$d/haproxy.cfg"
	SUBJECT_PID=$LAST_PID SUBJECT_PORT=$port
	wait_200 "$(scheme)://127.0.0.1:$port/small" haproxy "$SUBJECT_PID"
}

# Another build of switchyard as a subject, for A/B runs: SUBJECTS="switchyard switchyard:new"
# with SWITCHYARD_ALT="new=/path/to/switchyard"; of the bare floor likewise, "bare-pingora:old"
# with BARE_ALT="old=/path/to/bare_pingora".
alt_binary() {
	local entry
	for entry in ${SWITCHYARD_ALT:-}; do
		[[ ${entry%%=*} == "$1" ]] && { echo "${entry#*=}"; return; }
	done
	die "subject switchyard:$1 needs SWITCHYARD_ALT=\"$1=/path/to/switchyard\""
}
alt_bare() {
	local entry
	for entry in ${BARE_ALT:-}; do
		[[ ${entry%%=*} == "$1" ]] && { echo "${entry#*=}"; return; }
	done
	die "subject bare-pingora:$1 needs BARE_ALT=\"$1=/path/to/bare_pingora\""
}

start_subject() {
	case $1 in
	switchyard) start_switchyard ;;
	switchyard:*) start_switchyard "$UP_GREEN" "$(alt_binary "${1#switchyard:}")" "sy-${1#switchyard:}" ;;
	bare-pingora) start_bare_pingora ;;
	bare-pingora-tuned) start_bare_pingora tuned ;;
	bare-pingora-patched) start_bare_pingora patched ;;
	bare-pingora:*) start_bare_pingora "" "$(alt_bare "${1#bare-pingora:}")" "bare-${1#bare-pingora:}" ;;
	nginx) start_nginx_proxy ;;
	haproxy) start_haproxy ;;
	*) die "unknown subject $1" ;;
	esac
	log "$1 (pid $SUBJECT_PID) on 127.0.0.1:$SUBJECT_PORT, core $PROXY_CPU"
}

# --- measuring ---------------------------------------------------------------------------------

# Runs wrk against $1 for $2 s (pinned to LOAD_CPU), output in $3.
run_wrk() {
	taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$2"s --latency "$1" >"$3" 2>&1
}

# Runs h2load against $1 for $2 s (pinned to LOAD_CPU; H2_CONNS connections, H2_STREAMS
# concurrent streams each; h2 by ALPN), output in $3.
run_h2load() {
	taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D "$2" "$1" >"$3" 2>&1
}

# Runs HS_CLIENTS `openssl s_time -new` at once against the host:port of URL $1 for $2 s (pinned
# to LOAD_CPU), output in $3: each connection is a full handshake (no session reused) and one
# `GET <path> HTTP/1.0`, read until the proxy closes.
run_s_time() {
	local hostport=${1#https://} path i pids=()
	path=/${hostport#*/} hostport=${hostport%%/*}
	for ((i = 1; i <= HS_CLIENTS; i++)); do
		taskset -c "$LOAD_CPU" openssl s_time -connect "$hostport" -new -www "$path" -time "$2" \
			>"$3.$i" 2>&1 &
		pids+=($!)
	done
	for i in "${pids[@]}"; do wait "$i" || true; done
	cat "$3".* >"$3"
	rm -f "$3".*
}

# Reads the load generator's output ($2) into "rps p50_us p99_us requests errors"; $1 is wrk,
# h2load (p50/p99 are its mean/max: it has no percentiles) or s_time (rate = connections / $3 s;
# p50/p99 are the mean time per connection; errors: clients without a summary, or whose
# connections read fewer bytes than a response carries).
parse_load() {
	awk -v tool="$1" -v secs="$3" -v clients="$HS_CLIENTS" '
		function us(v) {
			if (v ~ /us$/) return v + 0
			if (v ~ /ms$/) return v * 1000
			if (v ~ /s$/) return v * 1000000
			return v
		}
		# wrk
		tool == "wrk" && /Requests\/sec:/ { rps = $2 }
		tool == "wrk" && / requests in / { reqs = $1 }
		tool == "wrk" && /^ +50% / { p50 = us($2) }
		tool == "wrk" && /^ +99% / { p99 = us($2) }
		tool == "wrk" && /Non-2xx or 3xx responses:/ { errs += $NF }
		tool == "wrk" && /Socket errors:/ { gsub(/,/, ""); errs += $4 + $6 + $8 + $10 }
		# h2load: "finished in 5.00s, 23456.40 req/s, ...", "requests: N total, N started,
		# N done, N succeeded, N failed, N errored, N timeout", "status codes: N 2xx, N 3xx, ..."
		tool == "h2load" && /^finished in/ { rps = $4 }
		tool == "h2load" && /^requests:/ { reqs = $6; errs += $10 + $12 + $14 }
		tool == "h2load" && /^status codes:/ { errs += $5 + $7 + $9 }
		tool == "h2load" && /^time for request:/ { p50 = us($6); p99 = us($5) }
		# s_time: "N connections in T real seconds, B bytes read per connection"
		tool == "s_time" && / connections in .* real seconds/ {
			reqs += $1; n++
			if ($(NF - 4) < 128) errs += $1
		}
		END {
			if (tool == "s_time") {
				errs += clients - n
				rps = reqs / secs
				p50 = p99 = reqs ? clients * secs * 1e6 / reqs : 0
			}
			if (reqs == 0) { print tool " made no request" > "/dev/stderr"; exit 1 }
			printf "%s %s %s %d %d\n", rps, p50, p99, reqs, errs
		}' "$2"
}

# One loaded run with wrk; see measure_with.
measure() { measure_with wrk "$@"; }

# One loaded run with load generator $1 (wrk, h2load or s_time) against process $2, URL $3, for
# $4 s; prints a TSV line:
#   rps p50_us p99_us requests errors cpu_us_per_req proxy_core_pct core0_busy_pct core1_busy_pct
# (errors = failed responses + socket errors; core busy from /proc/stat, whoever used it).
measure_with() {
	local tool=$1 pid=$2 url=$3 secs=$4 out=$WORK/$1.out
	local t0 t1 c0a c0b c1a c1b ns0 ns1 load s0 s1
	c0a=$(core_jiffies "$PROXY_CPU") c1a=$(core_jiffies "$LOAD_CPU")
	s0=$(cpu_ticks_split "$pid")
	t0=$(cpu_ticks "$pid") ns0=$(date +%s%N)
	"run_$tool" "$url" "$secs" "$out"
	t1=$(cpu_ticks "$pid") ns1=$(date +%s%N)
	s1=$(cpu_ticks_split "$pid")
	c0b=$(core_jiffies "$PROXY_CPU") c1b=$(core_jiffies "$LOAD_CPU")
	load=$(parse_load "$tool" "$out" "$secs") || { cat "$out" >&2; die "could not read $tool's output"; }
	# User and system µs per request, beside the TSV line (its columns are read by position).
	awk -v a="$s0" -v b="$s1" -v hz="$CLK_TCK" -v load="$load" 'BEGIN {
		split(a, x, " "); split(b, y, " "); split(load, l, " ")
		n = l[4] > 0 ? l[4] : 1
		printf "%.2f\t%.2f\n", (y[1] - x[1]) / hz * 1e6 / n, (y[2] - x[2]) / hz * 1e6 / n
	}' >"$WORK/cpu_split.last"
	awk -v ticks=$((t1 - t0)) -v hz="$CLK_TCK" -v ns=$((ns1 - ns0)) \
		-v c0="$c0a $c0b" -v c1="$c1a $c1b" -v load="$load" '
		function busy(s,   f) { split(s, f, " "); d = (f[3] - f[1]) + (f[4] - f[2]); return d ? 100 * (f[3] - f[1]) / d : 0 }
		BEGIN {
			split(load, l, " ")
			cpu_s = ticks / hz
			printf "%.0f\t%.0f\t%.0f\t%d\t%d\t%.2f\t%.0f\t%.0f\t%.0f\n", l[1], l[2], l[3], l[4], l[5],
				cpu_s * 1e6 / l[4], 100 * cpu_s / (ns / 1e9), busy(c0), busy(c1)
		}'
}

# The first N lines of stdin. Unlike head, it reads to the end, so the writer never gets SIGPIPE
# (which `set -o pipefail` would turn into a failed script).
first() { awk -v n="$1" 'NR <= n'; }

median() { sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# Column $3 of cpu_split.tsv (4: user, 5: sys µs per request) for subject $1 and body $2.
split_col() { awk -F'\t' -v s="$1" -v b="$2" -v c="$3" '$1 == s && $2 == b { print $c }' "$WORK/cpu_split.tsv"; }

# Per round: subject $1's CPU per request over nginx's (body $2), when nginx ran that round.
cpu_ratio_to_nginx() {
	awk -F'\t' -v s="$1" -v b="$2" '$2 == b && $1 == "nginx" { n[$3] = $9 } $2 == b && $1 == s { c[$3] = $9 }
		END { for (r in c) if (r in n && n[r] > 0) print c[r] / n[r] }' "$WORK/results.tsv"
}

# Column $3 of results.tsv for subject $1 and body $2.
col() { awk -F'\t' -v s="$1" -v b="$2" -v c="$3" '$1 == s && $2 == b { print $c }' "$WORK/results.tsv"; }

fmt_us() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else if (v >= 1000) printf "%.2f ms", v / 1000; else printf "%.0f µs", v }'; }

machine() {
	echo "- machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
	echo "- tools: $(nginx -v 2>&1 | sed 's/.*version: //'), $(haproxy -v | awk 'NR == 1 { print $1, $3 }'), wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }')"
	echo "- switchyard: ${SWITCHYARD_REV:-working tree $(cd "$REPO" && git describe --always --dirty 2>/dev/null || echo unknown)}, binary $SWITCHYARD"
	echo "- load before the run: $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min)"
}

# --- modes -------------------------------------------------------------------------------------

mode_compare() {
	local round subject body r
	: >"$WORK/results.tsv"
	: >"$WORK/cpu_split.tsv"
	declare -A pid_of port_of
	# Every subject stays up for the whole mode; only the one under load does any work, and CPU
	# is counted per process, so the idle ones do not distort the figures.
	for subject in $SUBJECTS; do
		start_subject "$subject"
		pid_of[$subject]=$SUBJECT_PID port_of[$subject]=$SUBJECT_PORT
		# Warm up: open the upstream connections and fault in the code paths before measuring.
		run_wrk "http://127.0.0.1:$SUBJECT_PORT/small" "$WARMUP" "$WORK/warmup.out"
	done
	for ((round = 1; round <= ROUNDS; round++)); do
		for subject in $SUBJECTS; do
			for body in $BODIES; do
				log "round $round/$ROUNDS: $subject, $body body, ${DURATION}s"
				r=$(measure "${pid_of[$subject]}" "http://127.0.0.1:${port_of[$subject]}/$body" "$DURATION")
				printf '%s\t%s\t%s\t%s\n' "$subject" "$body" "$round" "$r" >>"$WORK/results.tsv"
				printf '%s\t%s\t%s\t%s\n' "$subject" "$body" "$round" "$(cat "$WORK/cpu_split.last")" >>"$WORK/cpu_split.tsv"
				log "  $(cut -f1-6 <<<"$r" | awk -F'\t' '{ printf "%s req/s, p50 %s us, p99 %s us, %s requests, %s errors, %s us CPU/req", $1, $2, $3, $4, $5, $6 }')"
			done
		done
	done
	for subject in $SUBJECTS; do stop "${pid_of[$subject]}"; done

	echo "## Throughput and cost per request"
	echo
	machine
	echo "- wrk -t1 -c$CONNS --latency, ${DURATION} s per run, $ROUNDS interleaved rounds; proxy on core $PROXY_CPU, wrk + upstream nginx on core $LOAD_CPU"
	echo
	local nginx_rps label errors
	for body in $BODIES; do
		[[ $body == small ]] && label="128 B body" || label="16 KiB body"
		echo "### $label (median over $ROUNDS rounds)"
		echo
		echo "| subject | req/s | req/s range | vs nginx | p50 | p99 | proxy CPU µs/req | CPU vs nginx | user / sys µs/req | proxy core busy | wrk core busy | errors |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		nginx_rps=$(col nginx "$body" 4 | median)
		for subject in $SUBJECTS; do
			local rps lo hi p50 p99 cpu pct c1 user sys cpu_ratio
			rps=$(col "$subject" "$body" 4 | median)
			lo=$(col "$subject" "$body" 4 | sort -g | first 1)
			hi=$(col "$subject" "$body" 4 | sort -rg | first 1)
			p50=$(col "$subject" "$body" 5 | median)
			p99=$(col "$subject" "$body" 6 | median)
			errors=$(col "$subject" "$body" 8 | awk '{ s += $1 } END { print s + 0 }')
			cpu=$(col "$subject" "$body" 9 | median)
			pct=$(col "$subject" "$body" 10 | median)
			c1=$(col "$subject" "$body" 12 | median)
			user=$(split_col "$subject" "$body" 4 | median)
			sys=$(split_col "$subject" "$body" 5 | median)
			# The CPU ratio to nginx in each round (they ran back to back), then its median:
			# steadier on a noisy machine than the ratio of the two medians.
			cpu_ratio=$(cpu_ratio_to_nginx "$subject" "$body" | median)
			awk -v s="$subject" -v rps="$rps" -v lo="$lo" -v hi="$hi" -v n="$nginx_rps" \
				-v p50="$(fmt_us "$p50")" -v p99="$(fmt_us "$p99")" -v cpu="$cpu" -v pct="$pct" \
				-v c1="$c1" -v e="$errors" -v cr="$cpu_ratio" -v us="$user" -v ks="$sys" 'BEGIN {
					ratio = (n > 0 && n != "-") ? sprintf("%.2f", rps / n) : "-"
					cratio = (cr == "-") ? "-" : sprintf("%.2f×", cr)
					printf "| %s | %.0f | %.0f–%.0f | %s | %s | %s | %.1f | %s | %.1f / %.1f | %.0f %% | %.0f %% | %d |\n",
						s, rps, lo, hi, ratio, p50, p99, cpu, cratio, us, ks, pct, c1, e
				}'
		done
		echo
	done
	echo "<details><summary>every run (subject, body, round, req/s, p50 µs, p99 µs, requests, errors, CPU µs/req, proxy %, core $PROXY_CPU %, core $LOAD_CPU %)</summary>"
	echo
	echo '```'
	cat "$WORK/results.tsv"
	echo '```'
	echo "</details>"
	echo
	echo "<details><summary>user and system CPU µs per request, every run (subject, body, round, user, sys)</summary>"
	echo
	echo '```'
	cat "$WORK/cpu_split.tsv"
	echo '```'
	echo "</details>"
	echo
}

# switchyard's requests_total by pool, summed over status classes, as "blue green 5xx".
pool_counts() {
	curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
		/^switchyard_requests_total\{/ {
			pool = $0; sub(/.*pool="/, "", pool); sub(/".*/, "", pool)
			n[pool] += $NF
			if ($0 ~ /code="5xx"/) bad += $NF
		}
		END { printf "%d %d %d\n", n["blue"], n["green"], bad }'
}

# Flips switchyard between blue and green every FLIP_INTERVAL_MS for $2 seconds through the admin
# API on one keep-alive connection (a new `ctl` process per flip would cost the load core more
# than the flips themselves). Usage: flipper.py SOCKET SECONDS INTERVAL_MS; prints
# "flips_ok flips_failed rt_p50_ms rt_p99_ms applied_p99_us".
write_flipper() {
	cat >"$WORK/flipper.py" <<'PY'
import http.client, json, socket, sys, time

path, secs, interval = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]) / 1000


class UnixConnection(http.client.HTTPConnection):
    def __init__(self):
        super().__init__("localhost", timeout=5)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)


conn = UnixConnection()
ok = failed = 0
round_trips, applied = [], []
start = time.monotonic()
due = start
i = 0
while time.monotonic() - start < secs:
    to = "green" if i % 2 == 0 else "blue"
    body = json.dumps({"to": to, "force": True, "reason": "compare.sh flips"})
    t = time.monotonic()
    try:
        conn.request("POST", "/v1/flip", body, {"content-type": "application/json",
                                                "x-switchyard-actor": "compare.sh"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status == 200:
            ok += 1
            applied.append(json.loads(answer).get("applied_us", 0))
        else:
            failed += 1
            print(f"flip to {to}: {resp.status} {answer[:200]!r}", file=sys.stderr)
    except (OSError, http.client.HTTPException) as e:
        failed += 1
        print(f"flip to {to}: {e}", file=sys.stderr)
        conn.close()
        conn = UnixConnection()
    round_trips.append(time.monotonic() - t)
    i += 1
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * q))] if v else 0


print(ok, failed, f"{pct(round_trips, 0.5) * 1000:.2f}", f"{pct(round_trips, 0.99) * 1000:.2f}",
      pct(applied, 0.99))
PY
}

# Waits until both pools report ready in the admin API's status.
wait_both_ready() {
	local i
	for ((i = 0; i < 100; i++)); do
		if curl -s --unix-socket "$ADMIN_SOCKET" http://localhost/v1/status |
			python3 -c 'import json,sys; s=json.load(sys.stdin); sys.exit(0 if all(p["ready"] for p in s["pools"].values()) else 1)' 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	die "switchyard's pools did not both become ready"
}

mode_flips() {
	write_flipper
	start_switchyard "$UP_GREEN"
	wait_both_ready
	log "switchyard (pid $SUBJECT_PID) on 127.0.0.1:$SUBJECT_PORT; blue -> :$UP_BLUE, green -> :$UP_GREEN"
	run_wrk "http://127.0.0.1:$SUBJECT_PORT/small" "$WARMUP" "$WORK/warmup.out"
	local url="http://127.0.0.1:$SUBJECT_PORT/small" seg before after flips fpid r pair kind
	seg=$((FLIP_DURATION / FLIP_SEGMENTS))
	((seg >= 1)) || die "FLIP_DURATION / FLIP_SEGMENTS must be at least 1 s"
	: >"$WORK/flips.tsv"
	# FLIP_DURATION of flipping and as much without, cut into segments and interleaved A B B A
	# A B ..., so that a drift of the shared machine (someone's compile starting) hits both kinds
	# alike instead of looking like a dip or a gain.
	for ((pair = 1; pair <= FLIP_SEGMENTS; pair++)); do
		local order="no-flips flips"
		((pair % 2 == 0)) && order="flips no-flips"
		for kind in $order; do
			before=$(pool_counts)
			if [[ $kind == flips ]]; then
				log "segment $pair/$FLIP_SEGMENTS: flipping every ${FLIP_INTERVAL_MS} ms for ${seg}s under full load"
				# The flipper shares the load core with wrk: the proxy core stays the proxy's alone.
				taskset -c "$LOAD_CPU" python3 "$WORK/flipper.py" "$ADMIN_SOCKET" "$seg" \
					"$FLIP_INTERVAL_MS" >"$WORK/flipper.out" 2>>"$WORK/flipper.err" &
				fpid=$!
				PIDS+=("$fpid")
			else
				log "segment $pair/$FLIP_SEGMENTS: ${seg}s of full load, no flips"
			fi
			r=$(measure "$SUBJECT_PID" "$url" "$seg")
			flips="- - - - -"
			if [[ $kind == flips ]]; then
				wait "$fpid" || die "the flipper failed: $(cat "$WORK/flipper.err")"
				forget "$fpid"
				flips=$(cat "$WORK/flipper.out")
			fi
			after=$(pool_counts)
			printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$pair" "$r" "$flips" \
				"$(paste -d' ' <(echo "$before") <(echo "$after"))" >>"$WORK/flips.tsv"
		done
	done
	stop "$SUBJECT_PID"

	echo "## Flips under full load"
	echo
	machine
	echo "- switchyard, 1 worker thread, core $PROXY_CPU; wrk -t1 -c$CONNS on core $LOAD_CPU, 128 B body; blue and green are two nginx server blocks answering different bodies"
	echo "- ${FLIP_DURATION} s of load with flips and ${FLIP_DURATION} s without, in $FLIP_SEGMENTS interleaved pairs of ${seg} s segments (no-flips first, then flips first, ...)"
	echo "- flips: POST /v1/flip {\"to\": blue|green, \"force\": true} every ${FLIP_INTERVAL_MS} ms on one keep-alive admin-socket connection (state.json + history fsynced on every flip)"
	echo
	echo "| segment | req/s | p50 | p99 | requests | failed (non-2xx + socket errors) | proxy CPU µs/req | flips done / failed | flip round trip p50 / p99 | served by blue / green | 5xx (switchyard metrics) |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	# Columns: kind pair | rps p50 p99 requests errors cpu pct core0 core1 | flips | counts.
	awk -F'\t' -v seg="$seg" '
		function f(v) { return v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v) }
		{
			split($12, fl, " "); split($13, pc, " ")
			flips = fl[1] == "-" ? "-" : fl[1] " / " fl[2]
			rt = fl[1] == "-" ? "-" : fl[3] " / " fl[4] " ms"
			printf "| %d: %s | %d | %s | %s | %d | %d | %.1f | %s | %s | %d / %d | %d |\n",
				$2, $1, $3, f($4), f($5), $6, $7, $8, flips, rt, pc[4] - pc[1], pc[5] - pc[2], pc[6] - pc[3]
			reqs[$1] += $6; failed[$1] += $7; secs[$1] += seg; bad5[$1] += pc[6] - pc[3]
			if ($1 == "flips") { flipped += fl[1]; flip_failed += fl[2] }
			reqs_of[$2, $1] = $6; pairs = $2
		}
		END {
			for (k = 0; k < 2; k++) {
				kind = k ? "flips" : "no-flips"
				printf "| **all %s** | %.0f | | | %d | %d | | %s | | | %d |\n", kind, reqs[kind] / secs[kind],
					reqs[kind], failed[kind], k ? flipped " / " flip_failed : "-", bad5[kind]
			}
			lo = 1e9; hi = -1e9
			for (p = 1; p <= pairs; p++) {
				d = 100 * (1 - reqs_of[p, "flips"] / reqs_of[p, "no-flips"])
				if (d < lo) lo = d
				if (d > hi) hi = d
			}
			printf "\nThroughput dip while flipping: %.1f %% (requests completed with flips vs without, over %d s each; per pair of segments: %.1f %% to %.1f %%).\n",
				100 * (1 - reqs["flips"] / reqs["no-flips"]), secs["flips"], lo, hi
			printf "Failed requests while flipping: %d (must be 0); flips done: %d, failed: %d.\n",
				failed["flips"], flipped, flip_failed
		}' "$WORK/flips.tsv"
	if [[ -s $WORK/flipper.err ]]; then
		echo
		echo "Flipper errors:"
		echo '```'
		first 20 <"$WORK/flipper.err"
		echo '```'
	fi
	echo
}

# --- reloads and upgrades under load ------------------------------------------------------------

# Runs one command every INTERVAL for SECONDS and times it; used for config reloads and binary
# upgrades, on the load core. Usage:
#   driver.py LABEL SECONDS INTERVAL_MS FIRST_DELAY_MS PORT LOG [--swap TARGET A B] [--json]
#             [--watch-new] -- CMD...
# --swap: before each command, put A or B (whichever TARGET is not) in place of TARGET by rename.
# --json: the command prints switchyard's JSON answer (applied_us, took_ms, serving_after_ms).
# --watch-new: from the moment the command starts, watch for a process that did not exist before
#   it (a new worker or a new binary) to hold an established client connection on PORT: the new
#   generation serving. Read from /proc/net/tcp and /proc/<pid>/fd every 10 ms.
# The next command starts INTERVAL after the previous one started, or once it has finished (and,
# with --watch-new, its new process serves, up to 15 s), whichever is later.
# Appends one line per command to LOG: label, n, exit code, wall ms, applied µs or hand-over ms
# (switchyard), ms to the new generation holding a client connection ("-" when not watched or not
# seen within 15 s). Prints "done failed".
write_driver() {
	cat >"$WORK/driver.py" <<'PY'
import json, os, shutil, subprocess, sys, time

label, secs, interval, first, port, log = sys.argv[1], float(sys.argv[2]), \
    int(sys.argv[3]) / 1000, int(sys.argv[4]) / 1000, int(sys.argv[5]), sys.argv[6]
args = sys.argv[7:]
swap, as_json, watch = None, False, False
while args[0] != "--":
    if args[0] == "--swap":
        swap, args = args[1:4], args[4:]
    elif args[0] == "--json":
        as_json, args = True, args[1:]
    elif args[0] == "--watch-new":
        watch, args = True, args[1:]
    else:
        sys.exit(f"unknown option {args[0]}")
cmd = args[1:]
NAMES = {"switchyard", "nginx", "haproxy"}
comm_of = {}


def proxies():
    out = set()
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        if p not in comm_of:
            try:
                with open(f"/proc/{p}/comm") as f:
                    comm_of[p] = f.read().strip()
            except OSError:
                continue
        if comm_of[p] in NAMES:
            out.add(p)
    return out


def established():
    """Inodes of established TCP sockets whose local port is the proxy's."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            v = line.split()
            if v[3] == "01" and int(v[1].split(":")[1], 16) == port:
                inodes.add(v[9])
    return inodes


def holds_client(pids):
    inodes = established()
    for p in pids:
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return True
        except OSError:
            pass
    return False


done = failed = 0
start = time.monotonic()
due = start + first
n = 0
with open(log, "a") as out:
    while True:
        time.sleep(max(0.0, due - time.monotonic()))
        if time.monotonic() - start >= secs:
            break
        n += 1
        if swap:
            target, a, b = swap
            with open(target, "rb") as f, open(b, "rb") as g:
                now_b = f.read() == g.read()
            shutil.copyfile(a if now_b else b, target + ".tmp")
            os.replace(target + ".tmp", target)
        before = proxies() if watch else set()
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wall = served = None
        while True:
            now = time.monotonic()
            if wall is None and p.poll() is not None:
                wall = now - t0
            if watch and served is None and holds_client(proxies() - before):
                served = now - t0
            if wall is not None and (not watch or served is not None or now - t0 > 15):
                break
            time.sleep(0.01 if watch else 0.002)
        stdout, stderr = p.communicate()
        extra = "-"
        if p.returncode == 0:
            done += 1
            if as_json:
                try:
                    a = json.loads(stdout)
                    extra = a.get("applied_us", a.get("took_ms", "-"))
                except ValueError:
                    pass
        else:
            failed += 1
            print(f"{label} #{n}: exit {p.returncode}: {(stdout + stderr)[:300]!r}", file=sys.stderr)
        out.write(f"{label}\t{n}\t{p.returncode}\t{wall * 1000:.1f}\t{extra}\t"
                  f"{'-' if served is None else f'{served * 1000:.0f}'}\n")
        out.flush()
        # A command that took longer than the interval delays the next; none is skipped.
        due = max(due + interval, time.monotonic())
print(done, failed)
PY
}

# nginx's binary upgrade (nginx.org, "Controlling nginx": upgrading the executable on the fly):
# USR2 to the master starts the new binary (a new master and workers on the inherited sockets;
# the old pid file becomes nginx.pid.oldbin); once its workers run, WINCH tells the old workers to
# finish and QUIT the old master. $1: nginx's directory (its pid file).
write_nginx_upgrade() {
	cat >"$WORK/nginx-upgrade.sh" <<'SH'
#!/usr/bin/env bash
set -eu
d=$1
old=$(cat "$d/nginx.pid")
kill -USR2 "$old"
for ((i = 0; i < 500; i++)); do
	new=$(cat "$d/nginx.pid" 2>/dev/null || true)
	[[ -n $new && $new != "$old" ]] && pgrep -P "$new" >/dev/null && break
	sleep 0.01
done
[[ -n $new && $new != "$old" ]] || { echo "no new master after USR2 to $old" >&2; exit 1; }
kill -WINCH "$old"
kill -QUIT "$old"
SH
	chmod +x "$WORK/nginx-upgrade.sh"
}

# wrk's socket errors in $WORK/wrk.out as "connect/read/write/timeout", its non-2xx count and its
# maximum latency in µs.
wrk_details() {
	awk '
		function us(v) {
			if (v ~ /us$/) return v + 0
			if (v ~ /ms$/) return v * 1000
			if (v ~ /s$/) return v * 1000000
			return v
		}
		/Socket errors:/ { gsub(/,/, ""); sock = $4 "/" $6 "/" $8 "/" $10 }
		/Non-2xx or 3xx responses:/ { non2xx = $NF }
		/^ +Latency +[0-9]/ { max = us($4) }
		END { printf "%s\t%d\t%.0f\n", sock == "" ? "0/0/0/0" : sock, non2xx, max }' "$WORK/wrk.out"
}

# Starts $1 for a reload or upgrade run ($2: reloads or upgrades) and sets DRIVER_ARGS (what the
# driver runs) and SUBJECT_DIR (whose processes to stop at the end). Each subject proxies to
# UP_BLUE and UP_BLUE2; a reload swaps UP_BLUE2 for UP_BLUE3 and back, so every reload adds one
# backend and removes one while UP_BLUE stays.
start_changing() {
	local subject=$1 mode=$2 d
	local a="$UP_BLUE $UP_BLUE2" b="$UP_BLUE $UP_BLUE3"
	case $subject in
	switchyard)
		# Health checks every 100 ms so that a backend a reload adds is healthy (rise 2) and
		# takes traffic before the next reload removes it.
		SY_HEALTH_INTERVAL=100ms start_switchyard "$UP_GREEN" "$SWITCHYARD" switchyard \
			"\"127.0.0.1:$UP_BLUE\", \"127.0.0.1:$UP_BLUE2\""
		d=$WORK/switchyard
		wait_both_ready
		if [[ $mode == reloads ]]; then
			cp "$d/switchyard.toml" "$d/a.toml"
			SY_HEALTH_INTERVAL=100ms switchyard_toml "$SUBJECT_PORT" "$METRICS_PORT" "$d" \
				"\"127.0.0.1:$UP_BLUE\", \"127.0.0.1:$UP_BLUE3\"" "$UP_GREEN" >"$d/b.toml"
			DRIVER_ARGS=(--swap "$d/switchyard.toml" "$d/a.toml" "$d/b.toml" --json --
				"$SWITCHYARD" ctl --socket "$ADMIN_SOCKET" --json --actor compare.sh reload)
		else
			DRIVER_ARGS=(--json --watch-new -- "$SWITCHYARD" ctl --socket "$ADMIN_SOCKET" --json
				--actor compare.sh upgrade --timeout 30s)
		fi
		;;
	nginx)
		if [[ $mode == reloads ]]; then
			start_nginx_proxy "$a"
			d=$NGINX_DIR
			cp "$d/nginx.conf" "$d/a.conf"
			nginx_proxy_conf "$SUBJECT_PORT" "$d" "$b" off >"$d/b.conf"
			DRIVER_ARGS=(--swap "$d/nginx.conf" "$d/a.conf" "$d/b.conf" --watch-new --
				"$(command -v nginx)" -p "$d" -e "$d/error.log" -c "$d/nginx.conf" -s reload)
		else
			start_nginx_proxy "$a" daemon
			d=$NGINX_DIR
			DRIVER_ARGS=(--watch-new -- "$WORK/nginx-upgrade.sh" "$d")
		fi
		;;
	haproxy)
		start_haproxy "$a" master-worker
		d=$HAPROXY_DIR
		if [[ $mode == reloads ]]; then
			cp "$d/haproxy.cfg" "$d/a.cfg"
			haproxy_cfg "$SUBJECT_PORT" "$b" >"$d/b.cfg"
			DRIVER_ARGS=(--swap "$d/haproxy.cfg" "$d/a.cfg" "$d/b.cfg" --watch-new -- kill -USR2 "$SUBJECT_PID")
		else
			DRIVER_ARGS=(--watch-new -- kill -USR2 "$SUBJECT_PID")
		fi
		;;
	*) die "$mode: subject $subject is not supported (switchyard, nginx or haproxy)" ;;
	esac
	SUBJECT_DIR=$d
	log "$subject (pid $SUBJECT_PID) on 127.0.0.1:$SUBJECT_PORT, core $PROXY_CPU"
}

# Stops every process of the subject in SUBJECT_DIR (after an upgrade, not the one started).
stop_changing() {
	local pid
	stop "$SUBJECT_PID"
	for pid in $(work_pids "$SUBJECT_DIR"); do stop_pid "$pid"; done
}

# Interleaved segments with and without changes for every subject in $2; $1: reloads or upgrades.
# Rows go to $WORK/changes.tsv:
#   subject kind pair | rps p50 p99 requests errors cpu pct core0 core1 | sockerr non2xx max |
#   done failed
run_changes() {
	local mode=$1 subjects=$2 total=$3 segments=$4 interval_ms=$5 first_ms=$6
	local subject seg pair kind order r dpid url summary
	seg=$((total / segments))
	((seg >= 1)) || die "$mode: the duration / segments must be at least 1 s"
	: >"$WORK/changes.tsv"
	: >"$WORK/actions.tsv"
	for subject in $subjects; do
		start_changing "$subject" "$mode"
		url="http://127.0.0.1:$SUBJECT_PORT/small"
		run_wrk "$url" "$WARMUP" "$WORK/warmup.out"
		for ((pair = 1; pair <= segments; pair++)); do
			order="steady $mode"
			((pair % 2 == 0)) && order="$mode steady"
			for kind in $order; do
				summary="- -"
				if [[ $kind == "$mode" ]]; then
					log "$subject, segment $pair/$segments: $mode every $((interval_ms)) ms for ${seg}s under full load"
					taskset -c "$LOAD_CPU" python3 "$WORK/driver.py" "$subject" "$seg" "$interval_ms" \
						"$first_ms" "$SUBJECT_PORT" "$WORK/actions.tsv" "${DRIVER_ARGS[@]}" \
						>"$WORK/driver.out" 2>>"$WORK/driver.err" &
					dpid=$!
					PIDS+=("$dpid")
				else
					log "$subject, segment $pair/$segments: ${seg}s of full load, no $mode"
				fi
				r=$(measure "$SUBJECT_PID" "$url" "$seg")
				if [[ $kind == "$mode" ]]; then
					wait "$dpid" || die "the $mode driver failed: $(cat "$WORK/driver.err")"
					forget "$dpid"
					summary=$(cat "$WORK/driver.out")
				fi
				printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$subject" "$kind" "$pair" "$r" "$(wrk_details)" \
					"$(tr ' ' '\t' <<<"$summary")" >>"$WORK/changes.tsv"
				log "  $(cut -f1-5 <<<"$r" | awk -F'\t' '{ printf "%s req/s, p50 %s us, p99 %s us, %s requests, %s failed", $1, $2, $3, $4, $5 }')${summary:+, done/failed $summary}"
			done
		done
		# Let the last change settle (an old process finishing) before the next subject runs.
		sleep 2
		stop_changing
	done
}

# Percentile $2 (0-100) of column $3 of $WORK/actions.tsv for subject $1 (numeric values only).
action_pct() {
	awk -F'\t' -v s="$1" -v c="$3" '$1 == s && $c ~ /^[0-9.]+$/ { print $c }' "$WORK/actions.tsv" |
		sort -g | awk -v q="$2" '{ a[NR] = $1 } END {
			if (NR == 0) { print "-"; exit }
			i = int(NR * q / 100 + 0.999999); if (i < 1) i = 1; if (i > NR) i = NR; print a[i] }'
}

# The side-by-side table of a reloads or upgrades run, then every segment.
report_changes() {
	local mode=$1 subject
	echo "| subject | requests without / with | failed without / with | p50 without / with | p99 without / with | worst p99 / max with | $mode done / failed |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	awk -F'\t' -v mode="$mode" '
		function f(v) { return v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v) }
		function med(key,   n, i, j, t, a) {
			n = split(vals[key], a, " ")
			for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
			return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		}
		{
			if (!($1 in seen)) { seen[$1] = 1; order[++ns] = $1 }
			k = $1 SUBSEP $2
			reqs[k] += $7; failed[k] += $8
			vals[k, "p50"] = vals[k, "p50"] " " $5; vals[k, "p99"] = vals[k, "p99"] " " $6
			if ($6 > worst[k]) worst[k] = $6
			if ($15 > maxl[k]) maxl[k] = $15
			if ($2 == mode) { done[$1] += $16; bad[$1] += $17 }
		}
		END {
			for (i = 1; i <= ns; i++) {
				s = order[i]; q = s SUBSEP "steady"; c = s SUBSEP mode
				printf "| %s | %d / %d | %d / %d | %s / %s | %s / %s | %s / %s | %d / %d |\n", s,
					reqs[q], reqs[c], failed[q], failed[c], f(med(q SUBSEP "p50")), f(med(c SUBSEP "p50")),
					f(med(q SUBSEP "p99")), f(med(c SUBSEP "p99")), f(worst[c]), f(maxl[c]), done[s], bad[s]
			}
		}' "$WORK/changes.tsv"
	echo
	if [[ $mode == reloads ]]; then
		echo "| subject | how | time to applied p50 / p99 / max | command wall time p50 / p99 / max |"
	else
		echo "| subject | how | to the new process serving p50 / p99 / max | command wall time p50 / p99 / max |"
	fi
	echo "|---|---|---:|---:|"
	for subject in $(cut -f1 "$WORK/changes.tsv" | awk '!seen[$0]++'); do
		local how timing wall
		wall="$(action_pct "$subject" 50 4) / $(action_pct "$subject" 99 4) / $(action_pct "$subject" 100 4) ms"
		case $subject/$mode in
		switchyard/reloads)
			how='rewrite the file (rename), `switchyard ctl reload`'
			timing="$(action_pct "$subject" 50 5) / $(action_pct "$subject" 99 5) / $(action_pct "$subject" 100 5) µs (the reply's applied_us)" ;;
		switchyard/upgrades)
			how='`switchyard ctl upgrade` (same binary)'
			timing="$(action_pct "$subject" 50 6) / $(action_pct "$subject" 99 6) / $(action_pct "$subject" 100 6) ms (hand-over: $(action_pct "$subject" 50 5) / $(action_pct "$subject" 99 5) ms, the reply's took_ms)" ;;
		nginx/reloads)
			how='rewrite the file (rename), `nginx -s reload`'
			timing="$(action_pct "$subject" 50 6) / $(action_pct "$subject" 99 6) / $(action_pct "$subject" 100 6) ms (a new worker holds a client connection)" ;;
		nginx/upgrades)
			how='USR2, new master up, WINCH + QUIT to the old master'
			timing="$(action_pct "$subject" 50 6) / $(action_pct "$subject" 99 6) / $(action_pct "$subject" 100 6) ms (a new worker holds a client connection)" ;;
		haproxy/reloads)
			how='rewrite the file (rename), `kill -USR2` to the master (-W)'
			timing="$(action_pct "$subject" 50 6) / $(action_pct "$subject" 99 6) / $(action_pct "$subject" 100 6) ms (the new worker holds a client connection)" ;;
		haproxy/upgrades)
			how='`kill -USR2` to the master (-W): it re-executes its binary'
			timing="$(action_pct "$subject" 50 6) / $(action_pct "$subject" 99 6) / $(action_pct "$subject" 100 6) ms (the new worker holds a client connection)" ;;
		esac
		echo "| $subject | $how | $timing | $wall |"
	done
	echo
	echo "<details><summary>every segment</summary>"
	echo
	echo "| subject | segment | req/s | p50 | p99 | max | requests | failed | socket errors connect/read/write/timeout | non-2xx | $mode done / failed |"
	echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
	awk -F'\t' '
		function f(v) { return v >= 1000 ? sprintf("%.2f ms", v / 1000) : sprintf("%.0f µs", v) }
		{ printf "| %s | %d: %s | %d | %s | %s | %s | %d | %d | %s | %d | %s |\n", $1, $3, $2, $4, f($5),
			f($6), f($15), $7, $8, $13, $14, $16 == "-" ? "-" : $16 " / " $17 }' "$WORK/changes.tsv"
	echo
	echo "</details>"
	echo
	if [[ -s $WORK/driver.err ]]; then
		echo "Errors from the changes:"
		echo
		echo '```'
		first 20 <"$WORK/driver.err"
		echo '```'
		echo
	fi
}

mode_reloads() {
	write_driver
	run_changes reloads "$RELOAD_SUBJECTS" "$RELOAD_DURATION" "$RELOAD_SEGMENTS" "$RELOAD_INTERVAL_MS" 0
	local seg=$((RELOAD_DURATION / RELOAD_SEGMENTS))
	echo "## Configuration reloads under full load"
	echo
	machine
	echo "- each subject alone on core $PROXY_CPU (1 worker process / thread); wrk -t1 -c$CONNS on core $LOAD_CPU, 128 B body"
	echo "- backends 127.0.0.1:$UP_BLUE and :$UP_BLUE2, then :$UP_BLUE and :$UP_BLUE3, alternately: every reload adds one backend and removes one (nginx server blocks answering the same body); switchyard health-checks every 100 ms, rise 2"
	echo "- a reload every ${RELOAD_INTERVAL_MS} ms (run from core $LOAD_CPU) for ${RELOAD_DURATION} s, and ${RELOAD_DURATION} s without, per subject, in $RELOAD_SEGMENTS interleaved pairs of ${seg} s segments"
	echo "- failed = non-2xx responses + wrk socket errors; p50/p99 are medians over the segments of each kind"
	echo
	report_changes reloads
}

mode_upgrades() {
	write_driver
	write_nginx_upgrade
	run_changes upgrades "$UPGRADE_SUBJECTS" "$UPGRADE_DURATION" "$UPGRADE_SEGMENTS" $((UPGRADE_INTERVAL * 1000)) 1000
	local seg=$((UPGRADE_DURATION / UPGRADE_SEGMENTS))
	echo "## Binary upgrades under full load"
	echo
	machine
	echo "- each subject alone on core $PROXY_CPU (1 worker process / thread); wrk -t1 -c$CONNS on core $LOAD_CPU, 128 B body; backends 127.0.0.1:$UP_BLUE and :$UP_BLUE2"
	echo "- an upgrade to the same binary every ${UPGRADE_INTERVAL} s (the first 1 s into the segment) for ${UPGRADE_DURATION} s, and ${UPGRADE_DURATION} s without, per subject, in $UPGRADE_SEGMENTS interleaved pairs of ${seg} s segments"
	echo "- failed = non-2xx responses + wrk socket errors; p50/p99 are medians over the segments of each kind"
	echo "- to the new process serving: from the command's start until a process that did not exist before holds an established client connection on the proxy port (/proc/net/tcp and /proc/<pid>/fd, polled every 10 ms)"
	echo
	report_changes upgrades
}

mode_memory() {
	local need=$((IDLE_CONNS * 3 + 256)) subject idle held after ipid
	# Each held client costs the proxy one descriptor (its upstream connections are pooled) and
	# idle_conns.py one; raise the soft limit here, so that every process started below inherits it.
	if [[ $(ulimit -n) -lt $need ]]; then
		ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
		[[ $(ulimit -n) -ge $((IDLE_CONNS + 256)) ]] ||
			die "ulimit -n is $(ulimit -n); $IDLE_CONNS idle connections need about $((IDLE_CONNS + 256))"
	fi
	: >"$WORK/memory.tsv"
	for subject in $SUBJECTS; do
		start_subject "$subject"
		sleep 1
		idle=$(rss_kb "$SUBJECT_PID")
		taskset -c "$LOAD_CPU" python3 "$REPO/benches/idle_conns.py" 127.0.0.1 "$SUBJECT_PORT" \
			"$IDLE_CONNS" /small >"$WORK/idle.out" 2>"$WORK/idle.err" &
		ipid=$!
		PIDS+=("$ipid")
		local i
		for ((i = 0; i < 600; i++)); do
			grep -q '^ready' "$WORK/idle.out" && break
			kill -0 "$ipid" 2>/dev/null || die "idle_conns.py failed against $subject: $(cat "$WORK/idle.err")"
			sleep 0.1
		done
		grep -q '^ready' "$WORK/idle.out" || die "idle_conns.py did not open $IDLE_CONNS connections in 60 s"
		sleep 1
		held=$(rss_kb "$SUBJECT_PID")
		kill -TERM "$ipid"
		wait "$ipid" || die "$subject closed some of the idle connections: $(cat "$WORK/idle.err")"
		forget "$ipid"
		sleep 2
		after=$(rss_kb "$SUBJECT_PID")
		printf '%s\t%s\t%s\t%s\t%s\n' "$subject" "$idle" "$held" "$after" \
			"$(tree_pids "$SUBJECT_PID" | wc -w)" >>"$WORK/memory.tsv"
		log "$subject: idle $idle kB, with $IDLE_CONNS idle connections $held kB, after closing $after kB"
		stop "$SUBJECT_PID"
	done

	echo "## Resident memory"
	echo
	machine
	echo "- VmRSS from /proc/<pid>/status summed over the process tree (nginx: master + worker); 1 worker thread / process each"
	echo "- idle: ready, after one health-check/readiness request; held: $IDLE_CONNS client connections each made one keep-alive GET /small (128 B) and stay open (benches/idle_conns.py); after: 2 s after they closed"
	echo
	echo "| subject | processes | idle | with $IDLE_CONNS idle conns | per idle conn | after closing |"
	echo "|---|---:|---:|---:|---:|---:|"
	awk -F'\t' -v n="$IDLE_CONNS" '{
		printf "| %s | %d | %.1f MiB | %.1f MiB | %.1f KiB | %.1f MiB |\n", $1, $5, $2 / 1024, $3 / 1024, ($3 - $2) / n, $4 / 1024
	}' "$WORK/memory.tsv"
	echo
}

mode_profile() {
	if ! ensure_perf; then
		log "perf is not available; skipping the profile"
		echo "## Profile"
		echo
		echo "(skipped: perf is not available)"
		return 0
	fi
	local subject
	for subject in $PROFILE_SUBJECTS; do
		profile_one "$subject"
	done
	[[ $(wc -w <<<"$PROFILE_SUBJECTS") -gt 1 ]] && profile_side_by_side
	return 0
}

# Profiles one subject under wrk and reports where its time goes, then counts its system calls
# and context switches per request; keeps the perf data and the request count in
# $PROFILE_DIR/<subject>.{perf.data,requests} for profile_side_by_side.
profile_one() {
	local subject=$1 dir=${PROFILE_DIR:-$WORK/profile} wpid data stat_secs=3 tool=wrk load
	mkdir -p "$dir"
	data=$dir/$subject.perf.data
	start_subject "$subject"
	load="wrk -t1 -c$CONNS"
	if [[ ${PROFILE_H2:-0} == 1 ]]; then
		[[ -n $TLS_DIR ]] || die "PROFILE_H2=1 needs TLS=1 (HTTP/2 by ALPN)"
		tool=h2load load="h2load -t1 -c$H2_CONNS -m$H2_STREAMS"
	fi
	log "profiling $subject (pid $SUBJECT_PID) for ${PROFILE_SECONDS}s under $load, 128 B body, $(scheme)"
	"run_$tool" "$(scheme)://127.0.0.1:$SUBJECT_PORT/small" $((PROFILE_SECONDS + stat_secs + 3)) \
		"$WORK/wrk-profile.out" &
	wpid=$!
	PIDS+=("$wpid")
	sleep 1
	# DWARF call graphs: the release build has debug line info but no frame pointers. perf runs
	# on the load core so that it does not take cycles from the proxy it measures. Every process
	# of the subject: nginx's master does no work, its worker does.
	taskset -c "$LOAD_CPU" perf record -q -F 999 --call-graph dwarf,16384 \
		-p "$(tree_pids "$SUBJECT_PID" | tr -s ' ' ',' | sed 's/^,//')" \
		-o "$data" -- sleep "$PROFILE_SECONDS" >&2 2>&1
	# Counted apart from the profile (the syscall tracepoint has a cost of its own).
	taskset -c "$LOAD_CPU" perf stat -x, -e raw_syscalls:sys_enter,context-switches \
		-p "$(tree_pids "$SUBJECT_PID" | tr -s ' ' ',' | sed 's/^,//')" -o "$WORK/stat.csv" \
		-- sleep "$stat_secs" >&2 2>&1 || true
	wait "$wpid" || true
	forget "$wpid"
	stop "$SUBJECT_PID"
	# The load's mean rate over its whole run stands for the rate while perf watched.
	local rps syscalls switches
	rps=$(parse_load "$tool" "$WORK/wrk-profile.out" 1 | awk '{ print $1 }')
	awk -v r="$rps" -v p="$PROFILE_SECONDS" 'BEGIN { printf "%d\n", r * p }' >"$dir/$subject.requests"
	syscalls=$(awk -F, -v r="$rps" -v t="$stat_secs" '$3 == "raw_syscalls:sys_enter" { printf "%.2f", $1 / (r * t) }' "$WORK/stat.csv" 2>/dev/null)
	switches=$(awk -F, -v r="$rps" -v t="$stat_secs" '$3 == "context-switches" { printf "%.3f", $1 / (r * t) }' "$WORK/stat.csv" 2>/dev/null)
	printf '%s\t%s\n' "${syscalls:--}" "${switches:--}" >"$dir/$subject.calls"
	log "perf data in $data; reporting"

	echo "## Profile: $subject under load"
	echo
	echo "- perf record -F 999 --call-graph dwarf -p <$subject> for ${PROFILE_SECONDS} s, $load $(scheme)://…/small${TLS_DIR:+ ($(tls_key_name) certificate)}"
	echo "  (about $(cat "$dir/$subject.requests") requests in that time)"
	echo "- then perf stat for ${stat_secs} s: ${syscalls:--} system calls and ${switches:--} context switches per request"
	echo
	# perf pads its columns; `strip` drops the padding and the empty srcline columns.
	local report="perf report -i $data --stdio -g none --percent-limit 0.05"
	echo "### Where the time goes, by binary (self time)"
	echo
	echo '```'
	$report --no-children --sort dso 2>/dev/null | strip | first 8
	echo '```'
	echo
	echo "### Top 30 symbols (self time)"
	echo
	echo '```'
	$report --no-children --sort symbol 2>/dev/null | strip | first 30
	echo '```'
	echo
	[[ $subject == switchyard* ]] || return 0
	echo "### switchyard's own symbols"
	echo
	echo "Self time, then inclusive time (children; one symbol can appear more than once, once per"
	echo "inlining context):"
	echo
	echo '```'
	$report --no-children --sort symbol 2>/dev/null | strip | grep -E 'switchyard::' | first 20
	echo '---- inclusive ----'
	$report --children --sort symbol 2>/dev/null | strip | grep -E 'switchyard::' | first 30
	echo '```'
	echo
}

# The first two subjects' self time per symbol in µs per request (samples at 999 Hz ≈ 1.001 ms
# each, divided by the requests wrk completed while perf watched), largest difference first:
# where the first subject spends more than the second.
profile_side_by_side() {
	local dir=${PROFILE_DIR:-$WORK/profile} subject a b
	read -r a b _ <<<"$PROFILE_SUBJECTS"
	for subject in "$a" "$b"; do
		perf report -i "$dir/$subject.perf.data" --stdio -g none --no-children --sort symbol \
			-F overhead,sample,sym 2>/dev/null | strip |
			awk -v r="$(cat "$dir/$subject.requests")" -v s="$subject" '
				$2 ~ /^[0-9]+$/ { n = $2; $1 = ""; $2 = ""; sub(/^ +/, ""); printf "%s\t%s\t%.4f\n", s, $0, n * 1001 / r }'
	done >"$WORK/side.tsv"
	echo "## Profile: $a against $b, self time per request"
	echo
	echo "Samples × 1.001 ms / requests completed while perf watched; symbols whose difference is at"
	echo "least 0.1 µs, largest first; \`total\` is every sample."
	echo
	echo "| symbol | $a µs/req | $b µs/req | difference |"
	echo "|---|---:|---:|---:|"
	awk -F'\t' -v a="$a" -v b="$b" '{ t[$1] += $3 } END {
		printf "| total | %.2f | %.2f | %+.2f |\n", t[a], t[b], t[a] - t[b] }' "$WORK/side.tsv"
	paste "$dir/$a.calls" "$dir/$b.calls" | awk -F'\t' '{
		printf "| system calls per request (perf stat) | %s | %s | |\n", $1, $3
		printf "| context switches per request | %s | %s | |\n", $2, $4 }'
	awk -F'\t' -v a="$a" -v b="$b" '
		{ v[$2, $1] = $3; sym[$2] = 1 }
		END {
			for (s in sym) {
				d = v[s, a] - v[s, b]
				if (d >= 0.1 || d <= -0.1) printf "%s\t%.2f\t%.2f\t%+.2f\n", s, v[s, a], v[s, b], d
			}
		}' "$WORK/side.tsv" | sort -t$'\t' -k4,4gr |
		awk -F'\t' '{ printf "| `%s` | %s | %s | %s |\n", $1, $2, $3, $4 }'
	echo
}

# User-space instructions per request, counted by callgrind: start the subject under valgrind
# with collection off, warm up, switch collection on and zero the counters, drive wrk for
# INSTR_SECONDS, dump, divide by the requests wrk completed. Unlike CPU time this hardly moves with the machine's load (repeat runs agree within
# ~1 %), so it shows what a code change costs; kernel time (the same for every subject: equal
# system calls and TCP segments per request) is not in it. Valgrind runs the subject ~20x slower.
mode_instructions() {
	if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
		if [[ $(id -u) -eq 0 ]]; then
			log "installing valgrind"
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2 || true
		fi
		command -v callgrind_control >/dev/null || die "instructions mode needs valgrind (apt-get install -y valgrind)"
	fi
	local subject pid reqs ir
	echo "## Instructions per request (callgrind)"
	echo
	echo "- valgrind --tool=callgrind --instr-atstart=no; after a 2 s warm-up \`callgrind_control -i on\` and \`-z\`, then wrk -t1 -c$CONNS /small for ${INSTR_SECONDS} s; user space only"
	echo
	echo "| subject | requests | instructions per request | vs ${INSTR_SUBJECTS%% *} |"
	echo "|---|---:|---:|---:|"
	: >"$WORK/instructions.tsv"
	for subject in $INSTR_SUBJECTS; do
		[[ $subject == switchyard* || $subject == bare-pingora* ]] ||
			die "instructions mode runs pingora subjects only, not $subject"
		# Collection off until the warm-up is over: start-up, the first connections and the
		# warm-up's requests are run but not counted (and run faster uninstrumented).
		RUN_UNDER=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$WORK/$subject.cg.%p")
		start_subject "$subject"
		RUN_UNDER=()
		pid=$SUBJECT_PID
		run_wrk "http://127.0.0.1:$SUBJECT_PORT/small" 2 "$WORK/warmup.out"
		callgrind_control -i on "$pid" >/dev/null
		callgrind_control -z "$pid" >/dev/null
		run_wrk "http://127.0.0.1:$SUBJECT_PORT/small" "$INSTR_SECONDS" "$WORK/wrk-instr.out"
		callgrind_control -d "$pid" >/dev/null
		reqs=$(awk '/ requests in / { print $1 }' "$WORK/wrk-instr.out")
		stop "$pid"
		# The dump after zeroing is <name>.cg.<pid>.1; <name>.cg.<pid> is what ran after it.
		ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$WORK/$subject.cg.$pid.1")
		printf '%s\t%s\t%s\n' "$subject" "$reqs" "$ir" >>"$WORK/instructions.tsv"
		log "$subject: $reqs requests, $ir instructions"
	done
	awk -F'\t' 'NR == 1 { base = $3 / $2 }
		{ printf "| %s | %d | %.0f | %.3f |\n", $1, $2, $3 / $2, ($3 / $2) / base }' "$WORK/instructions.tsv"
	echo
}

# --- TLS ---------------------------------------------------------------------------------------

tls_key_name() { if [[ $TLS_KEY == rsa ]]; then echo RSA-2048; else echo "ECDSA P-256"; fi; }

# One self-signed certificate (TLS_KEY) for localhost and 127.0.0.1 that every subject serves:
# cert.pem and key.pem, and haproxy.pem with both (HAProxy reads them from one file). Sets TLS_DIR,
# which makes the subjects listen with TLS.
make_cert() {
	local d=$WORK/tls key_args
	case $TLS_KEY in
	ec) key_args=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1) ;;
	rsa) key_args=(-newkey rsa:2048) ;;
	*) die "TLS_KEY must be ec (ECDSA P-256) or rsa (RSA-2048), not '$TLS_KEY'" ;;
	esac
	mkdir -p "$d"
	openssl req -x509 "${key_args[@]}" -nodes -days 30 -subj /CN=localhost \
		-addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$d/key.pem" -out "$d/cert.pem" 2>"$d/req.err" ||
		die "openssl req failed: $(cat "$d/req.err")"
	cat "$d/cert.pem" "$d/key.pem" >"$d/haproxy.pem"
	chmod -R a+rX "$d"
	TLS_DIR=$d
	log "$(tls_key_name) certificate in $d"
}

# What a client offering h2 and http/1.1 gets from 127.0.0.1:$1: "TLSv1.3, <cipher>, <key
# exchange>, ALPN <protocol>".
negotiated() {
	openssl s_client -connect "127.0.0.1:$1" -alpn h2,http/1.1 </dev/null 2>/dev/null | awk '
		/^New, / { sub(/^New, /, ""); sub(/, Cipher is /, ", "); hs = $0 }
		/^Server Temp Key:/ { sub(/^Server Temp Key: /, ""); kx = $0 }
		/^ALPN protocol:/ { alpn = $3 }
		END { printf "%s, %s, ALPN %s\n", hs, kx, alpn ? alpn : "none" }'
}

tls_test_label() {
	case $1 in
	h1) echo "HTTP/1.1 keep-alive (wrk -t1 -c$CONNS, 128 B body)" ;;
	h2) echo "HTTP/2 (h2load -t1 -c$H2_CONNS -m$H2_STREAMS, 128 B body)" ;;
	handshakes) echo "New connections: a full handshake and one request each ($HS_CLIENTS × openssl s_time -new -www /small)" ;;
	esac
}

# Column $3 of tls.tsv for subject $1 and test $2.
tls_col() { awk -F'\t' -v s="$1" -v t="$2" -v c="$3" '$1 == s && $2 == t { print $c }' "$WORK/tls.tsv"; }

mode_tls() {
	local round subject test r tool
	: >"$WORK/tls.tsv"
	declare -A pid_of port_of proto_of
	for subject in $TLS_SUBJECTS; do
		start_subject "$subject"
		pid_of[$subject]=$SUBJECT_PID port_of[$subject]=$SUBJECT_PORT
		proto_of[$subject]=$(negotiated "$SUBJECT_PORT")
		log "$subject negotiates ${proto_of[$subject]}"
		run_wrk "https://127.0.0.1:$SUBJECT_PORT/small" "$WARMUP" "$WORK/warmup.out"
	done
	for ((round = 1; round <= ROUNDS; round++)); do
		for subject in $TLS_SUBJECTS; do
			for test in $TLS_TESTS; do
				case $test in
				h1) tool=wrk ;;
				h2) tool=h2load ;;
				handshakes) tool=s_time ;;
				*) die "unknown TLS test '$test' (h1, h2 or handshakes)" ;;
				esac
				log "round $round/$ROUNDS: $subject, $test, ${DURATION}s"
				r=$(measure_with "$tool" "${pid_of[$subject]}" "https://127.0.0.1:${port_of[$subject]}/small" "$DURATION")
				printf '%s\t%s\t%s\t%s\n' "$subject" "$test" "$round" "$r" >>"$WORK/tls.tsv"
				log "  $(cut -f1,4-6 <<<"$r" | awk -F'\t' '{ printf "%s req/s, %s requests, %s errors, %s us CPU/req", $1, $2, $3, $4 }')"
			done
		done
	done
	for subject in $TLS_SUBJECTS; do stop "${pid_of[$subject]}"; done

	echo "## TLS: throughput and cost per request ($(tls_key_name) certificate)"
	echo
	machine
	echo "- also: $(h2load --version 2>&1 | awk 'NR == 1 { print $1, $2 }'), $(openssl version | awk '{ print $1, $2 }') (s_time; nginx and HAProxy link it too), switchyard on rustls 0.23 with ring"
	echo "- one self-signed $(tls_key_name) certificate (openssl req) served by all; TLS 1.2 and 1.3 allowed, ALPN h2 and http/1.1; each subject with its defaults otherwise (session tickets, ciphers)"
	echo "- ${DURATION} s per run, $ROUNDS interleaved rounds (every subject and test once per round); proxy alone on core $PROXY_CPU (1 worker), load generator + upstream nginx (plain HTTP) on core $LOAD_CPU"
	echo "- negotiated with \`openssl s_client -alpn h2,http/1.1\`:"
	for subject in $TLS_SUBJECTS; do echo "  - $subject: ${proto_of[$subject]}"; done
	echo
	local nginx_rps nginx_cpu lat unit
	for test in $TLS_TESTS; do
		echo "### $(tls_test_label "$test") — median over $ROUNDS rounds"
		echo
		case $test in
		h1) lat="p50 / p99" ;;
		h2) lat="mean / max" ;;
		handshakes) lat="mean per connection" ;;
		esac
		unit=req/s
		[[ $test == handshakes ]] && unit=handshakes/s
		# The load generator's core saturates first (TLS costs the client too), so the rate says
		# more about the client than the proxy; "1 core" is what the proxy's CPU per request
		# would allow on a core of its own (1 s / CPU per request).
		echo "| subject | $unit | range | vs nginx | $lat | proxy CPU µs/req | CPU vs nginx | 1 core: $unit | proxy core busy | load core busy | errors |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		nginx_rps=$(tls_col nginx "$test" 4 | median)
		nginx_cpu=$(tls_col nginx "$test" 9 | median)
		for subject in $TLS_SUBJECTS; do
			local rps lo hi p50 p99 cpu pct c1 errors latency
			rps=$(tls_col "$subject" "$test" 4 | median)
			lo=$(tls_col "$subject" "$test" 4 | sort -g | first 1)
			hi=$(tls_col "$subject" "$test" 4 | sort -rg | first 1)
			p50=$(tls_col "$subject" "$test" 5 | median)
			p99=$(tls_col "$subject" "$test" 6 | median)
			errors=$(tls_col "$subject" "$test" 8 | awk '{ s += $1 } END { print s + 0 }')
			cpu=$(tls_col "$subject" "$test" 9 | median)
			pct=$(tls_col "$subject" "$test" 10 | median)
			c1=$(tls_col "$subject" "$test" 12 | median)
			latency="$(fmt_us "$p50") / $(fmt_us "$p99")"
			[[ $test == handshakes ]] && latency=$(fmt_us "$p50")
			awk -v s="$subject" -v rps="$rps" -v lo="$lo" -v hi="$hi" -v n="$nginx_rps" -v nc="$nginx_cpu" \
				-v lat="$latency" -v cpu="$cpu" -v pct="$pct" -v c1="$c1" -v e="$errors" 'BEGIN {
					ratio = (n > 0 && n != "-") ? sprintf("%.2f", rps / n) : "-"
					cratio = (nc > 0 && nc != "-") ? sprintf("%.2f", cpu / nc) : "-"
					printf "| %s | %.0f | %.0f–%.0f | %s | %s | %.1f | %s | %.0f | %.0f %% | %.0f %% | %d |\n",
						s, rps, lo, hi, ratio, lat, cpu, cratio, (cpu > 0 ? 1e6 / cpu : 0), pct, c1, e
				}'
		done
		echo
	done
	echo "<details><summary>every run (subject, test, round, req/s, p50/mean µs, p99/max µs, requests, errors, CPU µs/req, proxy %, core $PROXY_CPU %, core $LOAD_CPU %)</summary>"
	echo
	echo '```'
	cat "$WORK/tls.tsv"
	echo '```'
	echo "</details>"
	echo
}

# Drops perf's comment lines, blank lines and column padding.
strip() { { grep -v -e '^#' -e '^$' || true; } | sed -E -e 's/([[:space:]]+-)+[[:space:]]*$//' -e 's/[[:space:]]+$//'; }

# --- main --------------------------------------------------------------------------------------

if [[ ${TLS:-0} == 1 && $MODE != profile ]]; then
	die "TLS=1 is for the profile mode; the tls mode measures the rest over TLS"
fi
ensure_tools
build
make_files
[[ $MODE == tls || ${TLS:-0} == 1 ]] && make_cert
start_upstream
case $MODE in
compare) mode_compare ;;
flips) mode_flips ;;
reloads) mode_reloads ;;
upgrades) mode_upgrades ;;
memory) mode_memory ;;
profile) mode_profile ;;
instructions) mode_instructions ;;
tls) mode_tls ;;
all) mode_compare; mode_flips; mode_memory; mode_profile ;;
esac
log "done"
