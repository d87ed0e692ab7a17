#!/usr/bin/env bash
# The control plane's fan-out benchmark: for each N, a fresh `tollgate serve` (release, its own
# process, empty store) and N simulated sidecars in one client process (bench/fanout: real tonic
# clients on tollgate.v1 PolicyDistribution, multiplexed over a few HTTP/2 connections). Push v1,
# wait until all N are SYNCED, push v2 (and more), and print when 50 %, 99 % and 100 % of the
# nodes had received and ACKed it, plus the control plane's RSS before connecting, with N
# connected, and per connected node. The issue's goal: 10,000 nodes all ACKed in under 1 s.
#
#   bench/fanout.sh                          N = 1000 and 10000, 3 pushes each
#   NODES="10000" PUSHES=5 bench/fanout.sh   one size, more pushes
#   MTLS=1 NODES=10000 bench/fanout.sh       secured: TLS, node identity from client certificates
#
# Environment (defaults in brackets):
#   NODES ["1000 10000"]     fleet sizes, one fresh control plane each
#   PUSHES [3]               measured pushes after v1 (the first is v2)
#   ROLLOUT_STEPS [1,10,50,100]  then a staged rollout of one more version in these steps,
#                            no bake: the time each step's nodes took to ACK ("" to skip)
#   STREAMS_PER_CONN [500]   policy streams per HTTP/2 connection (1 = one connection per node)
#   OPEN_CONCURRENCY [256]   streams being opened at once by the client
#   MAX_OPENING [256]        the control plane's --max-opening-streams (admission throttle)
#   POLICY [examples/full-policy.json]   the document every version is derived from
#   PIN [0]                  1: control plane alone on CPU 1, the simulated fleet on CPU 0
#   MTLS [0]                 1: `tollgate certs init`, serve with --tls-cert/--tls-key/--client-ca;
#                            every simulated sidecar gets its own certificate and connection
#                            (as real sidecars do), so STREAMS_PER_CONN is 1
#   PORT [18300]             the control plane's gRPC port on 127.0.0.1 (HTTP port is PORT+1)
#   TIMEOUT [60]             seconds any one phase may take
#   CARGO_TARGET_DIR [<repo>/target]
#
# Both processes share this machine's CPUs unless PIN=1; the fleet's side (10,000 streams
# decoding and ACKing) is real work on the same cores, so the times are an upper bound for a
# control plane whose sidecars run elsewhere. Everything listens on 127.0.0.1 and every phase
# is bounded by TIMEOUT.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench/fanout"
NODES="${NODES:-1000 10000}"
PUSHES="${PUSHES:-3}"
ROLLOUT_STEPS="${ROLLOUT_STEPS-1,10,50,100}"
STREAMS_PER_CONN="${STREAMS_PER_CONN:-500}"
OPEN_CONCURRENCY="${OPEN_CONCURRENCY:-256}"
MAX_OPENING="${MAX_OPENING:-256}"
POLICY="${POLICY:-$root/examples/full-policy.json}"
PIN="${PIN:-0}"
MTLS="${MTLS:-0}"
[[ "$MTLS" == 1 ]] && STREAMS_PER_CONN=1
PORT="${PORT:-18300}"
TIMEOUT="${TIMEOUT:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$CARGO_TARGET_DIR/release"

say() { echo "fanout.sh: $*" >&2; }
fail() { echo "fanout.sh: FAILED: $*" >&2; exit 1; }

for n in $NODES; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || fail "NODES: $n is not a positive number"; done
[[ "$STREAMS_PER_CONN" =~ ^[1-9][0-9]*$ ]] || fail "STREAMS_PER_CONN=$STREAMS_PER_CONN: expected a positive number"

# One fd per HTTP/2 connection on each side, plus a few; STREAMS_PER_CONN=1 needs one per node.
max_nodes=0
for n in $NODES; do ((n > max_nodes)) && max_nodes=$n; done
need=$((max_nodes / STREAMS_PER_CONN + 256))
if (($(ulimit -n) < need)); then
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  (($(ulimit -n) >= need)) || fail "need $need open files, the hard limit is $(ulimit -Hn) (raise it or STREAMS_PER_CONN)"
fi

# ---- build ----------------------------------------------------------------------------------
say "building tollgate and bench/fanout (release) …"
cargo build -q --release --locked -p tollgate-controlplane --manifest-path "$root/Cargo.toml"
cargo build -q --release --locked --manifest-path "$bench/Cargo.toml"

if [[ "$PIN" == 1 ]] && (($(nproc) >= 2)); then
  cp_pin=(taskset -c 1)
  fleet_pin=(taskset -c 0)
  pinning="control plane alone on CPU 1, simulated fleet on CPU 0"
else
  cp_pin=()
  fleet_pin=()
  pinning="none: both processes share $(nproc) CPUs"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-fanout.XXXXXX")"
cp_pid=""
cleanup() {
  [[ -n "$cp_pid" ]] && kill "$cp_pid" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

wait_port() { # PORT PID LOG
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || fail "the control plane exited at start: $(tail -5 "$3")"
    sleep 0.1
  done
  fail "the control plane is not listening on 127.0.0.1:$1 after 10 s: $(tail -5 "$3")"
}

say "pinning: $pinning; ulimit -n $(ulimit -n); logs in $work"
results=()
for n in $NODES; do
  for p in $PORT $((PORT + 1)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "127.0.0.1:$p is already in use (set PORT)"; fi
  done
  log="$work/cp-$n.log"
  # taskset execs the program, so $! is the control plane's own pid.
  security=(--insecure-dev)
  addr="http://127.0.0.1:$PORT"
  client_tls=()
  if [[ "$MTLS" == 1 ]]; then
    certs="$work/certs-$n"
    "$bin/tollgate" certs init "$certs" >/dev/null
    security=(--tls-cert "$certs/control-plane.pem" --tls-key "$certs/control-plane-key.pem" --client-ca "$certs/ca.pem")
    addr="https://127.0.0.1:$PORT"
    client_tls=(--tls-dir "$certs")
  fi
  "${cp_pin[@]}" "$bin/tollgate" serve --grpc "127.0.0.1:$PORT" --http "127.0.0.1:$((PORT + 1))" \
    --data "$work/data-$n" --max-opening-streams "$MAX_OPENING" "${security[@]}" >"$log" 2>&1 &
  cp_pid=$!
  wait_port "$PORT" "$cp_pid" "$log"
  say "N=$n: control plane pid $cp_pid on 127.0.0.1:$PORT"
  out="$work/fanout-$n.out"
  "${fleet_pin[@]}" "$bin/tollgate-fanout" --addr "$addr" "${client_tls[@]}" --cp-pid "$cp_pid" --nodes "$n" \
    --token-file "$work/data-$n/admin-token" \
    --streams-per-conn "$STREAMS_PER_CONN" --open-concurrency "$OPEN_CONCURRENCY" \
    --policy "$POLICY" --pushes "$PUSHES" --timeout "$TIMEOUT" \
    ${ROLLOUT_STEPS:+--rollout-steps "$ROLLOUT_STEPS"} | tee "$out" ||
    fail "N=$n: the benchmark failed (control plane log: $log)"
  while IFS= read -r line; do results+=("$line"); done < <(grep '^RESULT' "$out")
  kill "$cp_pid" 2>/dev/null || true
  wait "$cp_pid" 2>/dev/null || true
  cp_pid=""
done

echo
tls_note=""
[[ "$MTLS" == 1 ]] && tls_note="; mTLS, one certificate and connection per node"
echo "fan-out summary ($pinning; $STREAMS_PER_CONN streams per connection$tls_note; policy $(basename "$POLICY"))"
for line in "${results[@]}"; do echo "  ${line#RESULT }"; done
