#!/usr/bin/env bash
# What one proxied tools/call costs in user-space instructions: the pass-through and the
# sidecar (1,000-rule policy) under callgrind, each serving the same ~1 KB call from the same
# generator. Instruction counts do not depend on what else the machine runs, so this tells a
# change that makes the sidecar cheaper from noise that bench/run.sh cannot separate on a
# shared machine. It leaves out what the kernel does (the larger part of a loopback proxy's
# CPU, about two thirds here) and cache effects: bench/run.sh remains the measure of req/s.
#
#   bench/instructions.sh                  the sidecar built from this checkout
#   SIDECAR=path bench/instructions.sh     another tollgate-sidecar binary (to A/B a change)
#
# Environment: DURATION [8] measured seconds per proxy, CONNECTIONS [8], BASE_PORT [18200]
# (upstream +1, proxy +2, admin +3; all 127.0.0.1), CARGO_TARGET_DIR [<repo>/target].
# Needs valgrind (Debian: apt-get install valgrind).
#
# With a binary that has line tables (`cargo build --profile profiling -p tollgate-sidecar`,
# then SIDECAR=target/profiling/tollgate-sidecar), the sidecar's own steps are broken down.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-8}"
CONNECTIONS="${CONNECTIONS:-8}"
BASE_PORT="${BASE_PORT:-18200}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$CARGO_TARGET_DIR/release"

say() { echo "instructions: $*" >&2; }
fail() { echo "instructions: FAILED: $*" >&2; exit 1; }

for tool in valgrind callgrind_annotate callgrind_control; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (Debian: apt-get install valgrind)"
done

say "building tollgate-sidecar, tollgate and bench/loadtest (release) …"
cargo build -q --release --locked -p tollgate-sidecar -p tollgate-controlplane --manifest-path "$root/Cargo.toml"
cargo build -q --release --locked --manifest-path "$root/bench/loadtest/Cargo.toml"
sidecar_bin="${SIDECAR:-$bin/tollgate-sidecar}"
[[ -x "$sidecar_bin" ]] || fail "SIDECAR=$sidecar_bin is not an executable"

work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-instructions.XXXXXX")"
"$bin/genpolicy" >"$work/policy.json"
"$bin/tollgate" policy check "$work/policy.json" >/dev/null || fail "the generated policy is invalid"

up_port=$((BASE_PORT + 1)) px_port=$((BASE_PORT + 2)) admin_port=$((BASE_PORT + 3))
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
ports_free BASE_PORT $up_port $px_port $admin_port

start upstream "$bin/upstream" --listen "127.0.0.1:$up_port"
wait_port upstream $up_port "$upstream_pid"

gen() { # LABEL SECONDS: prints the generator's RESULT line
  "$bin/loadgen" --url "http://127.0.0.1:$px_port/mcp" --label "$1" --tool jira_search_users \
    --duration "$2" --warmup 0 --connections "$CONNECTIONS" --clk-tck "$(getconf CLK_TCK)"
}

# measure NAME COMMAND…: runs the proxy under callgrind; counts only while the measured load
# runs (zeroed after a warm-up, dumped at its end); prints "NAME REQUESTS INSTRUCTIONS FILE".
measure() {
  local name="$1"
  shift
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.cg" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  wait_port "$name" $px_port "$pid" 30  # valgrind starts slowly
  gen warmup 2 >/dev/null || fail "$name: the warm-up load failed"
  callgrind_control -z "$pid" >/dev/null 2>&1
  local line
  line="$(gen "$name" "$DURATION")" || fail "$name: requests failed: $line"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local ok dump total
  ok="$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line")"
  dump="$(ls -t "$work/$name.cg".* 2>/dev/null | head -1)"
  [[ -n "$dump" && "${ok:-0}" -gt 0 ]] || fail "$name: no callgrind dump or no requests ($line)"
  total="$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')"
  echo "$name $ok $total $dump"
}

say "pass-through under callgrind ($DURATION s of load) …"
read -r _ pt_ok pt_ir _ < <(measure passthrough "$bin/passthrough" --listen "127.0.0.1:$px_port" --upstream "127.0.0.1:$up_port")
say "sidecar under callgrind ($DURATION s of load) …"
read -r _ sc_ok sc_ir sc_dump < <(measure sidecar "$sidecar_bin" --listen "127.0.0.1:$px_port" --admin "127.0.0.1:$admin_port" \
  --upstream "http://127.0.0.1:$up_port/mcp" --policy "$work/policy.json")

per() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
pt_per="$(per "$pt_ir" "$pt_ok")" sc_per="$(per "$sc_ir" "$sc_ok")"

echo
echo "Tollgate user-space instructions per proxied tools/call (callgrind; ~1 KB call, 1,000-rule policy)"
echo "  sidecar: $sidecar_bin"
printf '  %-13s %12s %12s\n' target requests "instr./req"
printf '  %-13s %12s %12s\n' passthrough "$pt_ok" "$pt_per"
printf '  %-13s %12s %12s\n' sidecar "$sc_ok" "$sc_per"
echo "  sidecar − pass-through: $((sc_per - pt_per)) instructions per request (×$(awk -v a="$sc_per" -v b="$pt_per" 'BEGIN { printf "%.3f", a / b }'))"
# The sidecar's own steps, inclusive, when the binary has line tables.
steps="$(callgrind_annotate --inclusive=yes --threshold=100 "$sc_dump" 2>/dev/null |
  awk -v n="$sc_ok" '/tollgate_sidecar::(listener::handle|enforce::inspect|mcp::peek::peek|enforce::judge|enforce::forward)(::\{\{closure\}\})? \[/ {
    v = $1; gsub(",", "", v); s = $0; sub(/.*tollgate_sidecar::/, "", s); sub(/ \[.*/, "", s); sub(/::\{\{closure\}\}/, "", s)
    if (!(s in seen)) { seen[s] = 1; printf "    %-22s %8.0f\n", s, v / n } }')"
if [[ -n "$steps" ]]; then
  echo "  the sidecar's steps (inclusive instructions per request):"
  echo "$steps"
else
  echo "  (build with --profile profiling and pass SIDECAR=… for a per-step breakdown)"
fi
echo "  raw results: $work"
