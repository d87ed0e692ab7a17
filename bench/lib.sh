# Shared by bench/run.sh and bench/instructions.sh (sourced, not run): background processes
# that stop with the script, free-port checks and start-up waits, all on 127.0.0.1.
# The sourcing script defines `fail MESSAGE` and sets `work` (the directory for logs).

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

# ports_free HINT PORT…: fails naming the first port already taken (HINT: the variable to change).
ports_free() {
  local hint="$1" p
  shift
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "127.0.0.1:$p is already in use (set $hint)"; fi
  done
}

# start NAME COMMAND…: runs it in the background, logs in $work/NAME.log; sets NAME_pid.
start() {
  local name="$1"
  shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=("$!")
  printf -v "${name}_pid" '%s' "$!"
}

# wait_port NAME PORT PID [SECONDS (10)]: until 127.0.0.1:PORT accepts, or NAME has exited.
wait_port() {
  local tries=$((${4:-10} * 10))
  for _ in $(seq "$tries"); do
    (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "$1 exited at start: $(tail -5 "$work/$1.log")"
    sleep 0.1
  done
  fail "$1 is not listening on 127.0.0.1:$2 after ${4:-10} s: $(tail -5 "$work/$1.log")"
}
