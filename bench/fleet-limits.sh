#!/usr/bin/env bash
# The fleet-wide limits benchmark: does a `global` limit hold across many sidecars, and use what
# it allows, when the demand is skewed; and what does a decision under a lease cost next to a
# local one? One process (bench/fleet-limits): a real control plane in-process
# (tollgate_controlplane::server::start on 127.0.0.1, a fresh data dir, short leases) and NODES
# simulated sidecars, each a real FleetCounters + Reporter (its own quota stream, a real tonic
# client) over a compiled bundle with one global limit of MAX calls per WINDOW seconds.
#
#   bench/fleet-limits.sh                                 20 sidecars (3 hot), 200 per 5 s, 30 s of calls; 5 × 1e6 timed decisions per store
#   NODES=50 HOT=5 MAX=1000 DURATION=60 bench/fleet-limits.sh
#
# Environment (defaults in brackets):
#   NODES [20]           simulated sidecars
#   HOT [3]              of them, calling at HOT_RATE [40] calls/s each
#   IDLE [8]             of them, making no calls (each still holds its standing lease of one call)
#                        the rest call at LOW_RATE [0.5] calls/s each; every node on a fixed schedule
#   MAX [200]            the global limit's calls per window
#   WINDOW [5]           the limit's window, seconds
#   DURATION [30]        seconds of calls (at least 2 windows; the first window is not scored)
#   LEASE_TTL_MS [2000]  LEASE_REFRESH_MS [250]  LEASE_GRACE_MS [250]   the control plane's lease timing
#   ITERATIONS [1000000] timed decisions per run      WARMUP [200000]   ROUNDS [5]   interleaved runs per store
#   ONE_BUSY ["24 1000"] then, for each fleet size N here: one pod calling at BUSY_RATE [100] calls/s
#                        among N − 1 idle ones (each asking for its standing call), same limit and
#                        lease timing, BUSY_DURATION [20] seconds of calls, every window scored (the
#                        first one starts while the idle pods hold their standing calls); "" skips these runs
#   CARGO_TARGET_DIR [<repo>/target]
#
# What it prints, from the log of every decision (time on one clock, admitted or not):
#   - the fullest trailing window ÷ MAX, sliding over every admission (the limit: never above 1.000);
#   - per fixed window after the first: admitted ÷ min(MAX, calls made) (goal ≥ 0.95 in every window);
#   - for each ONE_BUSY fleet: the busy pod's utilisation (the same ratio; its calls are the only
#     ones) and the fullest window ÷ MAX: idle pods must not hold the budget, however many;
#   - quota reports sent and leases taken (the sidecars' counters; the control plane's beside them);
#   - ns per decision of FleetCounters::acquire under a valid lease (the fleet's hot path) against
#     LocalCounters::acquire (pod limits, standalone sidecars) on the same charge, both through
#     `&dyn Counters` on one thread, ROUNDS interleaved runs each (goal: leased ÷ local ≈ 1.0,
#     PASS at ≤ 1.10). The timed sidecar charges its own grant bucket, which it always asks for
#     whole, so its lease never runs dry mid-run; a refused timed decision makes the run invalid.
#
# Missed goals print MISS and still exit 0; a failure (build, start, a sidecar that never holds a
# lease, an invalid latency run) exits 1. Everything listens on 127.0.0.1; the run takes about
# DURATION + 10 s after the build.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench/fleet-limits"
NODES="${NODES:-20}"
HOT="${HOT:-3}"
IDLE="${IDLE:-8}"
HOT_RATE="${HOT_RATE:-40}"
LOW_RATE="${LOW_RATE:-0.5}"
MAX="${MAX:-200}"
WINDOW="${WINDOW:-5}"
DURATION="${DURATION:-30}"
LEASE_TTL_MS="${LEASE_TTL_MS:-2000}"
LEASE_REFRESH_MS="${LEASE_REFRESH_MS:-250}"
LEASE_GRACE_MS="${LEASE_GRACE_MS:-250}"
ITERATIONS="${ITERATIONS:-1000000}"
WARMUP="${WARMUP:-200000}"
ROUNDS="${ROUNDS:-5}"
ONE_BUSY="${ONE_BUSY-24 1000}"
BUSY_RATE="${BUSY_RATE:-100}"
BUSY_DURATION="${BUSY_DURATION:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
bin="$CARGO_TARGET_DIR/release/tollgate-fleet-limits"

say() { echo "fleet-limits.sh: $*" >&2; }
fail() { echo "fleet-limits.sh: FAILED: $*" >&2; exit 1; }

for v in NODES HOT IDLE MAX WINDOW DURATION LEASE_TTL_MS LEASE_REFRESH_MS LEASE_GRACE_MS ITERATIONS WARMUP ROUNDS BUSY_RATE BUSY_DURATION; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || fail "$v=${!v}: expected a whole number"
done
for n in $ONE_BUSY; do
  [[ "$n" =~ ^[0-9]+$ && "$n" -ge 2 ]] || fail "ONE_BUSY: $n is not a fleet size of at least 2"
done

# ---- build ----------------------------------------------------------------------------------
say "building bench/fleet-limits (release: fat LTO, one codegen unit, as the workspace) …"
cargo build -q --release --locked --manifest-path "$bench/Cargo.toml" ||
  fail "the build failed; if bench/fleet-limits/Cargo.lock is out of date with the workspace, copy the workspace's Cargo.lock there and build once without --locked"

# The numbers are the sidecar's and the control plane's only if the bench runs their stack.
lock_version() { awk -v n="name = \"$2\"" '$0 == n { getline; gsub(/version = |"/, ""); print; exit }' "$1"; }
versions=""
for crate in tokio tonic h2 hyper; do
  ours="$(lock_version "$bench/Cargo.lock" "$crate")"
  theirs="$(lock_version "$root/Cargo.lock" "$crate")"
  [[ "$ours" == "$theirs" ]] ||
    fail "$crate is $ours in bench/fleet-limits/Cargo.lock but $theirs in the workspace's: copy the workspace's Cargo.lock to bench/fleet-limits/ and rebuild"
  versions+="${versions:+, }$crate $ours"
done

# ---- run ------------------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/tollgate-fleet-limits.XXXXXX")"
out="$work/out.txt"
say "about $((DURATION + 10)) s; output in $out"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" --nodes "$NODES" --hot "$HOT" --idle "$IDLE" --hot-rate "$HOT_RATE" --low-rate "$LOW_RATE" \
  --max "$MAX" --window "$WINDOW" --duration "$DURATION" \
  --lease-ttl-ms "$LEASE_TTL_MS" --lease-refresh-ms "$LEASE_REFRESH_MS" --lease-grace-ms "$LEASE_GRACE_MS" \
  --iterations "$ITERATIONS" --warmup "$WARMUP" --rounds "$ROUNDS" | tee "$out" ||
  fail "the benchmark failed (see above)"
# One busy pod among idle ones, per fleet size.
for n in $ONE_BUSY; do
  say "one busy pod among $((n - 1)) idle: about $((BUSY_DURATION + 10 + n / 20)) s; output in $work/one-busy-$n.txt"
  "$bin" --nodes "$n" --hot 1 --idle "$((n - 1))" --hot-rate "$BUSY_RATE" \
    --max "$MAX" --window "$WINDOW" --duration "$BUSY_DURATION" \
    --lease-ttl-ms "$LEASE_TTL_MS" --lease-refresh-ms "$LEASE_REFRESH_MS" --lease-grace-ms "$LEASE_GRACE_MS" \
    --skip-latency --score-first >"$work/one-busy-$n.txt" ||
    fail "the run with one busy pod among $((n - 1)) idle failed (see $work/one-busy-$n.txt)"
done
load_after="$(cut -d' ' -f1-3 /proc/loadavg)"

fleet="$(grep '^RESULT fleet ' "$out")" || fail "no RESULT fleet line in $out"
latency="$(grep '^RESULT latency ' "$out")" || fail "no RESULT latency line in $out"
# get LINE KEY: the value of KEY=… in a RESULT line.
get() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }
goal() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN { ok = (op == ">=") ? v >= g : v <= g; print ok ? "PASS" : "MISS" }'; }

worst_ratio="$(get "$fleet" worst_ratio)"
util_min="$(get "$fleet" util_min)"
ratio="$(get "$latency" ratio)"
refused="$(get "$latency" fleet_refused)"
low=$((NODES - HOT - IDLE))

# ---- summary --------------------------------------------------------------------------------
echo
echo "Tollgate fleet-wide limits benchmark"
echo "  control plane in-process on 127.0.0.1 (lease ttl $LEASE_TTL_MS ms, refresh $LEASE_REFRESH_MS ms, grace $LEASE_GRACE_MS ms; fresh data dir)"
echo "  $NODES simulated sidecars (FleetCounters + Reporter each, one quota stream each): $HOT hot at $HOT_RATE/s, $IDLE idle, $low at $LOW_RATE/s"
echo "  global limit $MAX per $WINDOW s; $DURATION s of calls after every sidecar held a lease"
echo "  $versions in the bench and the workspace alike; load average before/after: $load_before / $load_after"
echo
echo "  fullest trailing ${WINDOW} s window ÷ max:  $worst_ratio   ($(get "$fleet" worst_window) of $MAX admitted; goal ≤ 1.000: $(goal "$worst_ratio" "<=" 1.0))"
echo "  utilisation, $(get "$fleet" windows_scored) windows after the 1st: min $util_min, mean $(get "$fleet" util_mean)   (admitted ÷ min(max, calls made) per ${WINDOW} s window; goal ≥ 0.95 in every window: $(goal "$util_min" ">=" 0.95))"
echo "  calls made / admitted:            $(get "$fleet" calls) / $(get "$fleet" admitted)   (admitted without a lease: $(get "$fleet" unleased))"
echo "  quota reports / leases taken:     $(get "$fleet" reports) / $(get "$fleet" leases) by the sidecars   (control plane: $(get "$fleet" cp_reports) reports, $(get "$fleet" cp_leases) leases)"
echo "  ns per decision (median of $ROUNDS):   leased $(get "$latency" fleet_ns)   local $(get "$latency" local_ns)   (each run: leased $(get "$latency" fleet_runs) | local $(get "$latency" local_runs))"
if [[ "$refused" != 0 ]]; then
  echo "  leased ÷ local:                   $ratio   INVALID: $refused timed decisions were refused, so the leased runs did not time the hot path"
else
  echo "  leased ÷ local:                   $ratio   ($ITERATIONS decisions per run on one thread, every leased one admitted under its lease; goal ≈ 1.0, ≤ 1.10: $(goal "$ratio" "<=" 1.10))"
fi
for n in $ONE_BUSY; do
  busy="$(grep '^RESULT fleet ' "$work/one-busy-$n.txt")" || fail "no RESULT fleet line in $work/one-busy-$n.txt"
  u="$(get "$busy" util_min)"
  w="$(get "$busy" worst_ratio)"
  printf '  one busy pod among %4d idle:   utilisation min %s, mean %s (goal ≥ 0.95: %s)   fullest window ÷ max %s (goal ≤ 1.000: %s)   (%s of %s calls admitted at %s/s, %s windows scored)\n' \
    "$((n - 1))" "$u" "$(get "$busy" util_mean)" "$(goal "$u" ">=" 0.95)" "$w" "$(goal "$w" "<=" 1.0)" \
    "$(get "$busy" admitted)" "$(get "$busy" calls)" "$BUSY_RATE" "$(get "$busy" windows_scored)"
done
echo "  per-node and per-window tables: $out${ONE_BUSY:+ and $work/one-busy-*.txt}"
[[ "$refused" == 0 ]] || exit 1
