# Shared by the tests/multihost/*.sh tests (sourced, not a test itself): test hosts as network
# namespaces (launch/netns_hosts.sh), mpirun across them through launch/netns_agent.sh, and the
# checks every test needs. A test calls mh_init, then mh_hosts_up, then runs MH_MPIRUN.

MH_SOURCE_DIR="${TPNODE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
MH_BINARY_DIR="${TPNODE_BINARY_DIR:-$MH_SOURCE_DIR/build}"
TPNODE_BIN="$(realpath -m "${TPNODE_BIN:-$MH_BINARY_DIR/tpnode}")"
MODEL="${TPNODE_MODEL:-$MH_SOURCE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
MH_HOSTS_SH="$MH_SOURCE_DIR/launch/netns_hosts.sh"
MH_AGENT="$MH_SOURCE_DIR/launch/netns_agent.sh"
# Every generate/serve in these tests: the default model's chat-free greedy continuation.
MH_PROMPT="The lighthouse keeper climbed the stairs and"

MH_FAILED=0
MH_BG_PIDS=()
MH_PREFIX=""
WORK=""

mh_skip() { echo "SKIP: $*"; exit 77; }
mh_fail() { echo "FAIL: $*"; MH_FAILED=1; }
mh_now() { date +%s.%N; }
mh_elapsed() { echo "$(mh_now) - $1" | bc; }
# Gone: no such process, or a zombie nobody has reaped yet.
mh_gone() { local s; s="$(ps -o stat= -p "$1" 2>/dev/null)"; [[ -z "$s" || "$s" == Z* ]]; }

mh_cleanup() {
  local p
  for p in "${MH_BG_PIDS[@]}"; do
    kill -CONT "$p" 2>/dev/null
    kill -9 "$p" 2>/dev/null
  done
  # Also kills whatever the test left running inside its hosts.
  [[ -n "$MH_PREFIX" ]] && bash "$MH_HOSTS_SH" down -p "$MH_PREFIX" >/dev/null 2>&1
  [[ -n "$WORK" ]] && rm -rf "$WORK"
}

# mh_init PREFIX SUBNET: each test its own names and /24, so that tests never share hosts.
mh_init() {
  MH_PREFIX="$1"
  MH_SUBNET="$2"
  WORK="$(mktemp -d)"
  trap mh_cleanup EXIT
  # Whatever a rank writes relative to its working directory stays with the test.
  cd "$WORK" || exit 1
  trap 'exit 130' INT TERM
}

# mh_hosts_up N: N hosts, or skip with the exact reason when this machine cannot make them.
mh_hosts_up() {
  MH_NHOSTS="$1"
  [[ $(id -u) -eq 0 ]] || mh_skip "network namespaces need root (running as uid $(id -u))"
  command -v ip >/dev/null || mh_skip "iproute2 (ip) not found"
  command -v mpirun >/dev/null || mh_skip "mpirun not found (openmpi-bin)"
  local probe="$MH_PREFIX-probe" err
  if ! err="$(ip netns add "$probe" 2>&1)"; then
    mh_skip "cannot create a network namespace here: 'ip netns add' says: $err"
  fi
  if ! err="$(ip link add "$MH_PREFIX-pv" type veth peer name eth0 netns "$probe" 2>&1)"; then
    ip netns del "$probe" 2>/dev/null
    mh_skip "cannot create a veth pair into a namespace here: $err"
  fi
  ip link del "$MH_PREFIX-pv" 2>/dev/null
  ip netns del "$probe"
  if ! bash "$MH_HOSTS_SH" up -p "$MH_PREFIX" -n "$MH_NHOSTS" -s "$MH_SUBNET"; then
    echo "FAIL: launch/netns_hosts.sh up failed"
    exit 1
  fi
  MH_HOSTFILE="$WORK/hostfile"
  : >"$MH_HOSTFILE"
  local i
  for i in $(seq 1 "$MH_NHOSTS"); do echo "$MH_PREFIX-h$i slots=1" >>"$MH_HOSTFILE"; done
  # One rank per host, over TCP on the test subnet only: no shared memory between "hosts", no
  # UCX (it would pick its own transports), daemons started through the namespace agent. The
  # "hosts" share this machine's cores, which Open MPI cannot see: waiting ranks must yield
  # (busy-polling ranks made each all-reduce ~100x slower on 2 cores).
  MH_MPIRUN=(mpirun --allow-run-as-root --hostfile "$MH_HOSTFILE" --map-by ppr:1:node --bind-to none
             --mca plm_rsh_agent "$MH_AGENT" --mca plm_rsh_no_tree_spawn 1
             --mca pml ob1 --mca btl tcp,self --mca mpi_yield_when_idle 1
             --mca btl_tcp_if_include "$MH_SUBNET.0/24" --mca oob_tcp_if_include "$MH_SUBNET.0/24")
}

mh_host() { echo "$MH_PREFIX-h$1"; }
mh_addr() { echo "$MH_SUBNET.$1"; }

# mh_require_tpnode [SUBCOMMAND [FLAG...]]: the binary, the model, and the subcommand's flags.
mh_require_tpnode() {
  [[ -x "$TPNODE_BIN" ]] || mh_skip "no tpnode binary at $TPNODE_BIN"
  [[ -f "$MODEL" ]] || mh_skip "model $MODEL absent (launch/fetch_model.sh)"
  local sub="${1:-}"
  [[ -z "$sub" ]] && return 0
  shift
  local help
  help="$("$TPNODE_BIN" "$sub" --help 2>&1)" || mh_skip "tpnode has no '$sub' subcommand yet"
  local flag
  for flag in "$@"; do
    grep -q -- "$flag" <<<"$help" || mh_skip "tpnode $sub has no $flag option yet"
  done
}

# mh_generate OUT N [MPIRUN...]: greedy -n N continuation of MH_PROMPT; stdout in OUT.raw,
# stderr in OUT.err, the generated text alone in OUT; the exit code is generate's.
# Exact CPU arithmetic (F32 activations and KV): tp 3 and tp 1 then differ only in the order
# of float sums (~1e-6 relative), so their greedy texts are equal. With the default 8-bit
# activations a near-tie may flip.
MH_EXACT=(--backend cpu --exact-matmul)

mh_generate() {
  local out="$1" n="$2"
  shift 2
  "$@" "$TPNODE_BIN" generate -m "$MODEL" -p "$MH_PROMPT" -n "$n" --temp 0 "${MH_EXACT[@]}" --threads 1 \
      --no-progress --log-dir "$WORK/logs" >"$out.raw" 2>"$out.err"
  local rc=$?
  mh_strip_logs <"$out.raw" >"$out"
  return $rc
}

# Rank 0 may log to stdout before the text streams: drop spdlog lines ("[2026-01-02 03:04:05.678] ...").
mh_strip_logs() { grep -avE '^\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:.]+\] '; }

# The tp 1 greedy text, made once per test in the root namespace.
mh_reference() {
  local n="$1"
  mh_generate "$WORK/tp1.txt" "$n" || { echo "FAIL: tp 1 generate failed"; tail -20 "$WORK/tp1.txt.err"; exit 1; }
  echo "   tp 1: $(grep -hao 'generation: .*' "$WORK/tp1.txt.err" "$WORK/tp1.txt.raw" | head -1)"
  [[ -s "$WORK/tp1.txt" ]] || { echo "FAIL: tp 1 generate printed nothing"; exit 1; }
}

# mh_serve_start LOG [SERVE ARGS...]: `tpnode serve` with tp 3 under mpirun on the hosts, the
# coordinator (rank 0) on host 1 at MH_SERVE_ADDR:MH_SERVE_PORT; sets MH_SERVE_PID (mpirun).
MH_SERVE_PORT=8700
mh_serve_start() {
  local log="$1"
  shift
  MH_SERVE_ADDR="$(mh_addr 1)"
  "${MH_MPIRUN[@]}" -np 3 "$TPNODE_BIN" serve -m "$MODEL" "${MH_EXACT[@]}" --threads 1 --no-progress \
      --log-dir "$WORK/logs" --host "$MH_SERVE_ADDR" --port "$MH_SERVE_PORT" --no-http "$@" \
      >"$log" 2>&1 &
  MH_SERVE_PID=$!
  MH_BG_PIDS+=("$MH_SERVE_PID")
}

# mh_serve_wait_ready LOG SECONDS: until the coordinator accepts connections from the root
# namespace (under MPI it listens only once every rank has loaded its shard).
mh_serve_wait_ready() {
  local log="$1" limit="$2" t0
  t0="$(mh_now)"
  while true; do
    if mh_gone "$MH_SERVE_PID"; then echo "FAIL: serve ended before it was ready"; tail -30 "$log"; exit 1; fi
    if (exec 3<>"/dev/tcp/$MH_SERVE_ADDR/$MH_SERVE_PORT") 2>/dev/null; then
      echo "   serving at $MH_SERVE_ADDR:$MH_SERVE_PORT after $(mh_elapsed "$t0") s"
      return 0
    fi
    if (( $(echo "$(mh_elapsed "$t0") > $limit" | bc) )); then
      echo "FAIL: serve not ready after $limit s"; tail -30 "$log"; exit 1
    fi
    sleep 0.5
  done
}

# mh_request OUT SECONDS JSON: sends one request line from the root namespace and keeps the
# reply lines in OUT until a done or error line, end of stream, or SECONDS without a line.
# Sets MH_REPLY_END to done, error, eof or silent.
mh_request() {
  local out="$1" limit="$2" request="$3" line
  : >"$out"
  MH_REPLY_END=eof
  exec 3<>"/dev/tcp/$MH_SERVE_ADDR/$MH_SERVE_PORT" || { MH_REPLY_END=refused; return 1; }
  printf '%s\n' "$request" >&3
  local rc
  while true; do
    IFS= read -r -t "$limit" line <&3
    rc=$?
    if (( rc != 0 )); then
      # read's status is > 128 on its timeout, 1 at end of stream.
      [[ -n "$line" ]] && printf '%s\n' "$line" >>"$out"
      (( rc > 128 )) && MH_REPLY_END=silent
      break
    fi
    printf '%s\n' "$line" >>"$out"
    if [[ "$line" == *'"done":true'* ]]; then MH_REPLY_END=done; break; fi
    if [[ "$line" == *'"error":'* ]]; then MH_REPLY_END=error; break; fi
  done
  exec 3<&-
}

# JSON string contents -> text: \" \\ \/ \n \t \r \b \f \uXXXX.
mh_json_unescape() {
  local s="$1"
  s="${s//\\\\/$'\x01'}"
  s="${s//\\\"/\"}"
  s="${s//\\\//\/}"
  s="${s//$'\x01'/\\\\}"
  printf '%b' "$s"
}

# The concatenated "text" of the reply lines in $1.
mh_reply_text() {
  local line re='"text":"(([^"\\]|\\.)*)"'
  while IFS= read -r line; do
    [[ "$line" =~ $re ]] && mh_json_unescape "${BASH_REMATCH[1]}"
  done <"$1"
}

mh_finish() {
  if [[ $MH_FAILED == 0 ]]; then echo "PASS"; exit 0; fi
  exit 1
}
