#!/usr/bin/env bash
# The sidecar's load benchmark: how much of a bare Rust proxy's throughput
# tollgate-sidecar keeps while it enforces a 1,000-rule policy on every tools/call.
#
#   bench/run.sh                       3 rounds of (direct, pass-through, sidecar), 2 s warm-up + 10 s each
#   ROUNDS=5 DURATION=20 bench/run.sh  longer
#
# Environment (defaults in brackets):
#   DURATION [10]      measured seconds per run      WARMUP [2]   warm-up seconds per run
#   CONNECTIONS [64]   keep-alive connections         ROUNDS [3]   rounds of D, P, S (interleaved)
#   PIN [1]            1: pin (see below); 0: let the scheduler place everything
#   TOOL [jira_search_users]   the tool called (an exact, allowed, unlimited name of the policy)
#   BASE_PORT [18100]  upstream +1, pass-through +2, sidecar +3, sidecar admin +4 (all 127.0.0.1)
#   CARGO_TARGET_DIR [<repo>/target]
#   SIDECAR [built from this checkout]  a tollgate-sidecar binary to measure instead (to A/B a change)
#
# Three targets, each measured by the same closed-loop generator (bench/loadtest):
#   direct        generator → fast upstream                        (what the upstream does alone)
#   pass-through  generator → bare hyper proxy → fast upstream     (the ceiling of a Rust proxy)
#   sidecar       generator → tollgate-sidecar → fast upstream     (1,000-rule policy, no decision log)
#
# Pinning (PIN=1, the default, on a machine with at least 2 CPUs): the proxy under test
# (pass-through or sidecar) runs alone on CPU 1; the generator and the upstream share CPU 0.
# Each proxy then gets the same single core (its tokio runtime sizes itself to one worker),
# and neither proxy competes with the load it serves, so RPS compares proxies rather than
# scheduler luck. The cost: CPU 0 can become the bottleneck, which caps both proxies alike
# and makes the ratio optimistic — the summary prints each proxy's CPU use, and its CPU
# seconds per 10k requests, which do not depend on who saturates first.
#
# The req/s ratio is the median of each round's sidecar/pass-through ratio (neighbours in
# time). A round where either proxy got < 0.85 of its core (other load on the machine) makes
# that verdict UNRELIABLE; the pass-through/sidecar CPU-per-request ratio, printed beside it,
# is what the req/s ratio would be with both proxies saturating one core.
#
# Everything listens on 127.0.0.1 and every run stops by itself (time-bounded loops).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench/loadtest"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-64}"
ROUNDS="${ROUNDS:-3}"
PIN="${PIN:-1}"
TOOL="${TOOL:-jira_search_users}"
BASE_PORT="${BASE_PORT:-18100}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$CARGO_TARGET_DIR/release"

say() { echo "bench: $*" >&2; }
fail() { echo "bench: FAILED: $*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || fail "ROUNDS=$ROUNDS: expected 1 to 99"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || fail "CONNECTIONS=$CONNECTIONS: expected a positive number"

# ---- build ----------------------------------------------------------------------------------
say "building tollgate-sidecar and tollgate (release) …"
cargo build -q --release --locked -p tollgate-sidecar -p tollgate-controlplane --manifest-path "$root/Cargo.toml"
sidecar_bin="${SIDECAR:-$bin/tollgate-sidecar}"
[[ -x "$sidecar_bin" ]] || fail "SIDECAR=$sidecar_bin is not an executable"
say "building bench/loadtest (release) …"
cargo build -q --release --locked --manifest-path "$bench/Cargo.toml"

# The pass-through is only a fair ceiling if it runs the sidecar's hyper stack.
lock_version() { awk -v n="name = \"$2\"" '$0 == n { getline; gsub(/version = |"/, ""); print; exit }' "$1"; }
versions=""
for crate in hyper hyper-util tokio; do
  ours="$(lock_version "$bench/Cargo.lock" "$crate")"
  theirs="$(lock_version "$root/Cargo.lock" "$crate")"
  [[ "$ours" == "$theirs" ]] ||
    fail "$crate is $ours in bench/loadtest/Cargo.lock but $theirs in the sidecar's Cargo.lock: copy the workspace's Cargo.lock to bench/loadtest/ and rebuild"
  versions+="${versions:+, }$crate $ours"
done

# ---- policy ---------------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")"
"$bin/genpolicy" >"$work/policy.json"
check="$("$bin/tollgate" policy check "$work/policy.json")" || fail "the generated policy is invalid: $check"

# ---- processes ------------------------------------------------------------------------------
if [[ "$PIN" == 1 ]] && (($(nproc) >= 2)); then
  proxy_pin=(taskset -c 1)
  load_pin=(taskset -c 0)
  pinning="proxy under test on CPU 1; generator + upstream on CPU 0 (taskset)"
else
  proxy_pin=()
  load_pin=()
  pinning="none: the scheduler places every process on any of $(nproc) CPUs"
fi

up_port=$((BASE_PORT + 1)) pt_port=$((BASE_PORT + 2)) sc_port=$((BASE_PORT + 3)) admin_port=$((BASE_PORT + 4))
# shellcheck source=bench/lib.sh
source "$root/bench/lib.sh"
ports_free BASE_PORT $up_port $pt_port $sc_port $admin_port

# taskset execs the program, so $! is the program's own pid.
start upstream "${load_pin[@]}" "$bin/upstream" --listen "127.0.0.1:$up_port"
start passthrough "${proxy_pin[@]}" "$bin/passthrough" --listen "127.0.0.1:$pt_port" --upstream "127.0.0.1:$up_port"
start sidecar "${proxy_pin[@]}" "$sidecar_bin" --listen "127.0.0.1:$sc_port" --admin "127.0.0.1:$admin_port" \
  --upstream "http://127.0.0.1:$up_port/mcp" --policy "$work/policy.json"
wait_port upstream $up_port "$upstream_pid"
wait_port passthrough $pt_port "$passthrough_pid"
wait_port sidecar $sc_port "$sidecar_pid"

declare -A port=([direct]=$up_port [passthrough]=$pt_port [sidecar]=$sc_port)
declare -A proxy_pid=([direct]="" [passthrough]=$passthrough_pid [sidecar]=$sidecar_pid)

# load TARGET DURATION WARMUP CONNECTIONS: one generator run; prints its RESULT line.
load() {
  local watch=(--watch "upstream:$upstream_pid" --watch gen:self)
  [[ -n "${proxy_pid[$1]}" ]] && watch+=(--watch "proxy:${proxy_pid[$1]}")
  "${load_pin[@]}" "$bin/loadgen" --url "http://127.0.0.1:${port[$1]}/mcp" --label "$1" --tool "$TOOL" \
    --duration "$2" --warmup "$3" --connections "$4" --clk-tck "$(getconf CLK_TCK)" "${watch[@]}"
}

for t in direct passthrough sidecar; do
  load "$t" 0.3 0 1 >/dev/null || fail "the smoke test against $t failed (see above)"
done

# ---- rounds ---------------------------------------------------------------------------------
runs=$((ROUNDS * 3))
say "$ROUNDS rounds × (direct, pass-through, sidecar): $runs runs of ${WARMUP} s + ${DURATION} s, $CONNECTIONS connections; about $((runs * (WARMUP + DURATION) / 60 + 1)) min"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
failed_runs=0
: >"$work/results.txt"
for r in $(seq "$ROUNDS"); do
  for t in direct passthrough sidecar; do
    rc=0
    line="$(load "$t" "$DURATION" "$WARMUP" "$CONNECTIONS")" || rc=$?
    [[ $rc == 0 ]] || failed_runs=$((failed_runs + 1))
    [[ -n "$line" ]] || fail "the generator printed no result for $t (exit $rc)"
    echo "round=$r $line" >>"$work/results.txt"
    get() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
    printf 'bench: round %d %-12s %7s req/s  p50 %7s µs  p99 %7s µs  proxy CPU %s%s\n' \
      "$r" "$t" "$(get rps)" "$(get p50_us)" "$(get p99_us)" "$(get proxy_util)" \
      "$([[ $rc == 0 ]] || echo "  !!! FAILED REQUESTS")" >&2
  done
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- summary --------------------------------------------------------------------------------
# values TARGET KEY: one value per round.
values() { awk -v t="label=$1" -v k="$2" '$0 ~ " " t " " { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) print kv[2] } }' "$work/results.txt"; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else { m = (v[NR / 2] + v[NR / 2 + 1]) / 2; printf (m >= 1000 ? "%.0f\n" : "%.4g\n"), m } }'; }
med() { values "$1" "$2" | median; }
hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
# The RSS now, split: anonymous (heap, stacks) and file-backed (the binary's pages, shared and reclaimable).
rss_split() { awk '/^RssAnon:/ { a = $2 } /^RssFile:/ { f = $2 } END { printf "now %.1f anon + %.1f file", a / 1024, f / 1024 }' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
goal() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = (op == ">=") ? v >= g : v <= g; print ok ? "PASS" : "MISS" }'; }

sc_rss="$(hwm_mib "$sidecar_pid")" sc_split="$(rss_split "$sidecar_pid")"
pt_rss="$(hwm_mib "$passthrough_pid")" pt_split="$(rss_split "$passthrough_pid")"
cpu_ratio="$(ratio "$(med sidecar proxy_cpu_s_per_10k)" "$(med passthrough proxy_cpu_s_per_10k)")"
cpu_parity="$(ratio "$(med passthrough proxy_cpu_s_per_10k)" "$(med sidecar proxy_cpu_s_per_10k)")"
# Per round: the sidecar's req/s over the pass-through's in the same round (neighbours in time,
# so a burst of other load skews both alike), and the smaller share of its core either proxy got.
# Prints "RATIO MIN_UTIL" per round.
round_ratios() {
  awk '{ r = l = rps = u = ""
         for (i = 1; i <= NF; i++) { split($i, kv, "=")
           if (kv[1] == "round") r = kv[2]; else if (kv[1] == "label") l = kv[2]
           else if (kv[1] == "rps") rps = kv[2]; else if (kv[1] == "proxy_util") u = kv[2] }
         if (l == "passthrough" || l == "sidecar") { q[l, r] = rps; util[l, r] = u; if (r > n) n = r } }
       END { for (r = 1; r <= n; r++) if (q["passthrough", r] > 0) {
               m = util["passthrough", r] < util["sidecar", r] ? util["passthrough", r] : util["sidecar", r]
               printf "%.3f %s\n", q["sidecar", r] / q["passthrough", r], m } }' "$work/results.txt"
}
rps_ratio="$(round_ratios | cut -d' ' -f1 | median)"
# With PIN=1 a proxy that got less than 85% of its core was held back by something else
# (CPU 0, or other processes on the machine): its round's req/s says little about the proxies.
starved="$(round_ratios | awk '$2 < 0.85 { n++ } END { print n + 0 }')"

echo
echo "Tollgate sidecar load benchmark"
echo "  $ROUNDS rounds × (direct, pass-through, sidecar) interleaved; $CONNECTIONS keep-alive HTTP/1.1 connections; ${WARMUP} s warm-up + ${DURATION} s measured per run"
echo "  call: tools/call $TOOL with ~1 KB of arguments; policy: $check"
echo "  pinning: $pinning"
echo "  sidecar: $sidecar_bin"
echo "  $versions in the bench and the sidecar alike; load average before/after: $load_before / $load_after"
echo
printf '  %-13s %9s %9s %9s %9s %10s %24s %11s\n' target "req/s" "p50 µs" "p99 µs" "p99.9 µs" "proxy CPU" "proxy CPU s / 10k" "gen+up CPU"
printf '  %-13s %9s %9s %9s %9s %10s %24s %11s\n' "" "(median)" "" "" "" "(cores)" "total (user+sys)" "(cores)"
for t in direct passthrough sidecar; do
  gen_up="$(awk -v a="$(med "$t" gen_util)" -v b="$(med "$t" upstream_util)" 'BEGIN { printf "%.2f", a + b }')"
  proxy_util="$(med "$t" proxy_util)"
  proxy_cpu="$(med "$t" proxy_cpu_s_per_10k) ($(med "$t" proxy_user_s_per_10k)+$(med "$t" proxy_sys_s_per_10k))"
  [[ "$t" == direct ]] && proxy_util="-" proxy_cpu="-"
  printf '  %-13s %9s %9s %9s %9s %10s %24s %11s\n' "$t" "$(med "$t" rps)" "$(med "$t" p50_us)" "$(med "$t" p99_us)" \
    "$(med "$t" p999_us)" "$proxy_util" "$proxy_cpu" "$gen_up"
done
echo "  (each round's req/s: direct $(values direct rps | xargs) | pass-through $(values passthrough rps | xargs) | sidecar $(values sidecar rps | xargs))"
echo
echo "  (each round's sidecar / pass-through req/s and the smaller share of a core either proxy got: $(round_ratios | awk '{ printf "%s%s (%s)", (NR > 1 ? ", " : ""), $1, $2 }'))"
if [[ "$PIN" == 1 && "$starved" -gt 0 ]]; then
  verdict="UNRELIABLE: in $starved of $ROUNDS rounds a proxy got < 0.85 of its core (the machine was busy; see the load average) — judge by the CPU line below"
else
  verdict="$(goal "$rps_ratio" ">=" 0.90)"
fi
echo "  sidecar / pass-through req/s:          $rps_ratio   (median of the rounds' ratios; goal ≥ 0.90: $verdict)"
echo "  pass-through / sidecar CPU per request: $cpu_parity   (≈ the req/s ratio with both saturating one core; goal ≥ 0.90: $(goal "$cpu_parity" ">=" 0.90))"
echo "  sidecar CPU s per 10k requests:        $(med sidecar proxy_cpu_s_per_10k)   (pass-through $(med passthrough proxy_cpu_s_per_10k): ×$cpu_ratio)"
echo "  sidecar peak RSS (VmHWM):              $sc_rss MiB   (goal ≤ 20 MiB: $(goal "$sc_rss" "<=" 20); $sc_split MiB)"
echo "  pass-through peak RSS (VmHWM):         $pt_rss MiB   ($pt_split MiB)"
if ((failed_runs > 0)); then
  echo
  echo "  !!!!!!!! $failed_runs of $runs runs had failed requests (non-200, wrong body or errors): the numbers above are not valid !!!!!!!!"
else
  echo "  failed requests: none (every response was HTTP 200 with the upstream's result for its id)"
fi
echo "  raw results and logs: $work"
((failed_runs == 0)) || exit 1
