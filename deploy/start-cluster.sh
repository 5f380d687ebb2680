#!/usr/bin/env bash
# Start, stop or inspect one node of a Ray cluster that you run yourself (`ray start`), set up the way
# pathway-attribution needs it. docs/cluster.md ("A cluster you start yourself") explains each choice;
# tests/ray_cluster.py starts the test suite's clusters with this same script.
#
#   deploy/start-cluster.sh head                   # on the head machine
#   deploy/start-cluster.sh worker 10.0.0.5:6379   # on each worker machine (the head's GCS address)
#   deploy/start-cluster.sh status [head|worker]   # is this machine's node running?
#   deploy/start-cluster.sh stop [head|worker]     # stop this machine's node (only the one this script started)
#
# Starting is idempotent: a node that already runs (its pid file names a live `ray start`) is left
# alone. The node runs `ray start --block` in its own session, so `stop` ends exactly that node and
# its processes, never another Ray of the machine (`ray stop` would end every Ray of the user).
# --foreground (or PATHWAY_FOREGROUND=1) execs `ray start --block` in place instead: for systemd,
# supervisord, a container's command, or a test that owns the process.
#
# Settings, all from the environment (defaults in brackets):
#   PATHWAY_PYTHON_BIN   the bin folder of the Python that has the project installed; it goes first on
#                        the node's PATH, because the raylet's PATH decides what `python` means in a job's
#                        entrypoint [<checkout>/.venv/bin, else /opt/pytorch/bin (cluster.yaml's AMI)]
#   PATHWAY_NODE_DIR     the node's folder: Ray's temp dir, ray-start.log and ray.pid; one per node
#                        [/tmp/pathway-ray-head or /tmp/pathway-ray-worker]
#   PATHWAY_ENV_FILE     KEY=VALUE lines exported to the node, hence to every job driver and worker on it:
#                        AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, STORAGE_OPTIONS.
#                        Keep it mode 600. Empty: none. [~/.config/pathway-attribution/node.env if it exists]
#   RAY_AUTH_MODE        token; `disabled` only for a cluster on loopback [token]
#   RAY_AUTH_TOKEN_PATH  the token file, the same on every node and client [~/.ray/auth_token]; the head
#                        creates it (mode 600) if it is missing, a worker refuses to start without it
#   PATHWAY_NODE_IP      --node-ip-address [Ray's choice]. A loopback address (127.0.0.1) makes a
#                        single-machine cluster: every socket of the head stays on loopback, and no
#                        worker can join it (Ray on Linux would otherwise rewrite 127.0.0.1 to the
#                        host's address and listen there). A worker refuses a loopback address.
#   PATHWAY_NUM_CPUS, PATHWAY_NUM_GPUS   what the node offers [what Ray detects]
#   PATHWAY_GCS_PORT     head: the GCS port [6379]
#   PATHWAY_DASHBOARD    head: 0 starts no dashboard (and no job API) [1]
#   PATHWAY_DASHBOARD_HOST, PATHWAY_DASHBOARD_PORT   head: dashboard and job API [127.0.0.1, 8265]
#   PATHWAY_CLIENT_PORT  head: Ray Client server [10001]
#   PATHWAY_PORT_BASE    the node's own fixed ports, so that two nodes on one host never share one [8076]:
#                        object manager = base, node manager = base+1, dashboard agent gRPC = base+2,
#                        dashboard agent HTTP = base+3 (the one job submission goes through), metrics
#                        export = base+4, runtime-env agent = base+5. A second node on the same host needs
#                        another base (and its own PATHWAY_NODE_DIR). Each can also be set alone:
#                        PATHWAY_OBJECT_MANAGER_PORT, PATHWAY_NODE_MANAGER_PORT, PATHWAY_AGENT_GRPC_PORT,
#                        PATHWAY_AGENT_HTTP_PORT, PATHWAY_METRICS_PORT, PATHWAY_RUNTIME_ENV_PORT
#   PATHWAY_RAY_START_ARGS  more `ray start` flags, split on spaces
set -euo pipefail

die() { echo "start-cluster.sh: error: $*" >&2; exit 2; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
checkout="$(dirname "$here")"

foreground="${PATHWAY_FOREGROUND:-0}"
args=()
for arg in "$@"; do
    if [[ "$arg" == "--foreground" ]]; then foreground=1; else args+=("$arg"); fi
done
set -- "${args[@]+"${args[@]}"}"
action="${1:-}"
case "$action" in
    head) role=head ;;
    worker) role=worker; head_address="${2:-}"
            [[ -n "$head_address" ]] || die "worker needs the head's GCS address: $0 worker HEAD_IP:6379" ;;
    stop|status) role="${2:-head}"; [[ "$role" == head || "$role" == worker ]] || die "$action takes head or worker, not '$role'" ;;
    *) die "usage: $0 head | worker HEAD_IP:PORT | status [head|worker] | stop [head|worker] [--foreground]" ;;
esac

loopback=0
[[ "${PATHWAY_NODE_IP:-}" =~ ^(127\.|::1$|localhost$) ]] && loopback=1
if [[ "$action" == worker && "$loopback" == 1 ]]; then
    die "a worker cannot listen on loopback only (PATHWAY_NODE_IP=$PATHWAY_NODE_IP): Ray would put it on the host's address; unset PATHWAY_NODE_IP, or set the address the head reaches this machine at"
fi

node_dir="${PATHWAY_NODE_DIR:-/tmp/pathway-ray-$role}"
pid_file="$node_dir/ray.pid"
log_file="$node_dir/ray-start.log"

running_pid() {  # the pid of this node's `ray start`, if it still runs
    local pid
    [[ -f "$pid_file" ]] || return 1
    pid="$(cat "$pid_file")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "ray start" || return 1
    echo "$pid"
}

if [[ "$action" == status ]]; then
    if pid="$(running_pid)"; then echo "the $role node runs (pid $pid, $node_dir)"; exit 0; fi
    echo "no $role node runs from $node_dir"; exit 3
fi

if [[ "$action" == stop ]]; then
    pid="$(running_pid)" || { echo "no $role node runs from $node_dir"; rm -f "$pid_file"; exit 0; }
    kill -TERM "$pid"  # `ray start --block` ends the node's processes on SIGTERM
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pid_file"
    echo "stopped the $role node (pid $pid)"
    exit 0
fi

# -- start ---------------------------------------------------------------------------------------
if pid="$(running_pid)"; then
    echo "the $role node already runs (pid $pid, $node_dir): nothing to do"
    exit 0
fi

bin="${PATHWAY_PYTHON_BIN:-}"
if [[ -z "$bin" ]]; then
    for candidate in "$checkout/.venv/bin" /opt/pytorch/bin; do
        [[ -x "$candidate/ray" ]] && { bin="$candidate"; break; }
    done
fi
[[ -n "$bin" && -x "$bin/ray" && -x "$bin/python" ]] \
    || die "no Python with Ray found (${bin:-tried $checkout/.venv/bin and /opt/pytorch/bin}): set PATHWAY_PYTHON_BIN to the bin folder of the Python that has the project installed"
export PATH="$bin:$PATH"  # the raylet's PATH: `python` in a job's entrypoint is this Python

env_file="${PATHWAY_ENV_FILE-$HOME/.config/pathway-attribution/node.env}"
if [[ -n "${PATHWAY_ENV_FILE:-}" && ! -f "$env_file" ]]; then
    die "PATHWAY_ENV_FILE=$env_file does not exist: create it (KEY=VALUE lines, mode 600), or set PATHWAY_ENV_FILE= (empty) for none"
fi
if [[ -n "$env_file" && -f "$env_file" ]]; then
    if [[ "$(stat -c %a "$env_file")" =~ [1-7]$|[1-7].$ ]]; then
        echo "start-cluster.sh: warning: $env_file is readable by other users: chmod 600 it" >&2
    fi
    set -a; . "$env_file"; set +a  # every job driver and worker of this node inherits these
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" ]]; then
    token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$token_file" ]]; then
        [[ "$role" == head ]] || die "no Ray auth token at $token_file: copy the head's token file there (mode 600), or set RAY_AUTH_TOKEN_PATH"
        (umask 077; mkdir -p "$(dirname "$token_file")"; "$bin/python" -c "import secrets; print(secrets.token_hex(32), end='')" > "$token_file")
        echo "created the cluster's auth token at $token_file: copy it to every node and client" >&2
    fi
fi

base="${PATHWAY_PORT_BASE:-8076}"
start=(start "--temp-dir=$node_dir" --disable-usage-stats
       "--object-manager-port=${PATHWAY_OBJECT_MANAGER_PORT:-$base}"
       "--node-manager-port=${PATHWAY_NODE_MANAGER_PORT:-$((base + 1))}"
       "--dashboard-agent-grpc-port=${PATHWAY_AGENT_GRPC_PORT:-$((base + 2))}"
       "--dashboard-agent-listen-port=${PATHWAY_AGENT_HTTP_PORT:-$((base + 3))}"
       "--metrics-export-port=${PATHWAY_METRICS_PORT:-$((base + 4))}"
       "--runtime-env-agent-port=${PATHWAY_RUNTIME_ENV_PORT:-$((base + 5))}")
if [[ "$role" == head ]]; then
    start+=(--head "--port=${PATHWAY_GCS_PORT:-6379}" "--ray-client-server-port=${PATHWAY_CLIENT_PORT:-10001}")
    if [[ "${PATHWAY_DASHBOARD:-1}" == 0 ]]; then
        start+=(--include-dashboard=false)
    else
        start+=("--dashboard-host=${PATHWAY_DASHBOARD_HOST:-127.0.0.1}" "--dashboard-port=${PATHWAY_DASHBOARD_PORT:-8265}")
    fi
else
    start+=("--address=$head_address")
fi
if [[ "$loopback" == 1 ]]; then
    # Ray's single-machine mode (its mode on macOS and Windows): the node takes the loopback address
    # and each of its daemons binds it. Without it, Ray on Linux listens on the host's address.
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
fi
[[ -n "${PATHWAY_NODE_IP:-}" ]] && start+=("--node-ip-address=$PATHWAY_NODE_IP")
[[ -n "${PATHWAY_NUM_CPUS:-}" ]] && start+=("--num-cpus=$PATHWAY_NUM_CPUS")
[[ -n "${PATHWAY_NUM_GPUS:-}" ]] && start+=("--num-gpus=$PATHWAY_NUM_GPUS")
# shellcheck disable=SC2206  # split on purpose
[[ -n "${PATHWAY_RAY_START_ARGS:-}" ]] && start+=(${PATHWAY_RAY_START_ARGS})
start+=(--block)

mkdir -p "$node_dir"
if [[ "$foreground" == 1 ]]; then
    echo $$ > "$pid_file"
    exec "$bin/ray" "${start[@]}"
fi

setsid "$bin/ray" "${start[@]}" > "$log_file" 2>&1 < /dev/null &
pid=$!
echo "$pid" > "$pid_file"
for _ in $(seq 240); do
    if grep -q "Ray runtime started" "$log_file" 2>/dev/null; then
        echo "the $role node runs (pid $pid); log: $log_file; stop it with: $0 stop $role"
        exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { tail -n 40 "$log_file" >&2; rm -f "$pid_file"; die "ray start exited (log above: $log_file)"; }
    sleep 0.5
done
tail -n 40 "$log_file" >&2
die "the $role node did not start within 120 s (log: $log_file); stop it with: $0 stop $role"
