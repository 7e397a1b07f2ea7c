#!/usr/bin/env python3
"""A small orch client in Python: gRPC over TLS, with a bearer token.

It generates the Python code of orch's API from the repository's proto files
each time it starts (into a temporary directory; nothing generated is kept),
reads the same client configuration as orchctl, and calls the manager's
Cluster service:

    python3 orch_client.py nodes
    python3 orch_client.py run --until completed busybox:latest echo hello
    python3 orch_client.py run busybox:latest sleep 300      # until running
    python3 orch_client.py stop TASK_ID

Where the manager is and how to trust it (the first that says wins):
  --manager URL, --ca FILE, --token TOKEN on the command line;
  the configuration file: --config FILE, else $ORCH_CONFIG, else
  $XDG_CONFIG_HOME/orch/config.toml, else ~/.config/orch/config.toml. It is
  the file `orchctl dev` and a manager's first start write:

    manager = "https://127.0.0.1:7070"
    token = "orch_..."
    ca = "..."   # the cluster's CA certificate, PEM, as a multi-line string

The manager's certificate names `orch-manager`, `localhost`, `127.0.0.1`,
`::1`, its host name and its listen address. To reach it at another address
(another IP of its host, a tunnel), pass --server-name orch-manager: the
certificate is then checked for that name (gRPC's channel option
`grpc.ssl_target_name_override`), still against the cluster's CA.

Every failure prints one line, `orch_client: CODE: message` for a gRPC error
(the status code's name, then the manager's message), and exits non-zero.

Needs Python 3.11 or newer and the packages in requirements.txt.
"""

import argparse
import datetime
import os
import pathlib
import sys
import tempfile
import tomllib

# gRPC's C core would log each failed TLS handshake to stderr as well: keep
# it to errors, so that a failure is the one line this client prints.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
try:
    import grpc
except ImportError:  # main() says how to install it.
    grpc = None

PROG = "orch_client"
INSTALL = "install the packages of examples/python/requirements.txt (see README.md)"
DEFAULT_MANAGER = "https://127.0.0.1:7070"
DEFAULT_PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"
# The states a task ends in.
ENDED = {"completed", "failed", "stopped", "lost"}


class Failure(Exception):
    """An error to print as one line before exiting non-zero."""


# ---- the API, generated from the protos at start --------------------------


class Api:
    """orch.v1's generated modules: `pb` has the Cluster service's messages,
    `types` the shared ones and the enums, `ClusterStub` the client."""

    def __init__(self, cluster_pb2, types_pb2, cluster_pb2_grpc):
        self.pb = cluster_pb2
        self.types = types_pb2
        self.ClusterStub = cluster_pb2_grpc.ClusterStub

    def task_state(self, value):
        """A task state as orchctl writes it: TASK_STATE_RUNNING -> running."""
        return self.types.TaskState.Name(value).removeprefix("TASK_STATE_").lower()

    def node_state(self, value):
        return self.types.NodeState.Name(value).removeprefix("NODE_STATE_").lower()


def load_api(proto_dir):
    """Compiles proto_dir/orch/v1/*.proto with grpc_tools' protoc into a
    temporary directory and imports the result."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError as e:
        raise Failure(f"{e}: {INSTALL}") from None
    proto_dir = pathlib.Path(proto_dir)
    if not (proto_dir / "orch" / "v1" / "cluster.proto").is_file():
        raise Failure(f"{proto_dir}: no orch/v1/cluster.proto there (pass --proto DIR)")
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.glob("orch/v1/*.proto"))
    # The well-known types (google/protobuf/*.proto) come with grpc_tools.
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory(prefix="orch-python-") as out:
        code = protoc.main(
            [
                "protoc",
                f"--proto_path={proto_dir}",
                f"--proto_path={well_known}",
                f"--python_out={out}",
                f"--grpc_python_out={out}",
                *protos,
            ]
        )
        if code != 0:
            raise Failure(f"protoc could not compile {proto_dir}/orch/v1 (exit {code})")
        # Regular packages, so that no other `orch` on sys.path shadows them.
        for package in ("orch", "orch/v1"):
            pathlib.Path(out, package, "__init__.py").touch()
        sys.path.insert(0, out)
        try:
            # Importing reads every generated file: the directory may go then.
            from orch.v1 import cluster_pb2, cluster_pb2_grpc, types_pb2
        finally:
            sys.path.remove(out)
    return Api(cluster_pb2, types_pb2, cluster_pb2_grpc)


# ---- where the manager is, and how to trust it ----------------------------


def config_path(flag):
    """The client configuration file, found as orchctl finds it."""
    if flag:
        return pathlib.Path(flag)
    if os.environ.get("ORCH_CONFIG"):
        return pathlib.Path(os.environ["ORCH_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or pathlib.Path.home() / ".config"
    return pathlib.Path(base) / "orch" / "config.toml"


def load_config(path):
    """The configuration file's settings; a missing file has none."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise Failure(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise Failure(f"{path}: {e}") from None


def connect(args):
    """A channel to the manager: TLS checked against the cluster's CA, and
    the token sent as the metadata `authorization: Bearer TOKEN` on every
    call."""
    config = load_config(config_path(args.config))
    url = args.manager or config.get("manager") or DEFAULT_MANAGER
    token = args.token or config.get("token")
    if args.ca:
        try:
            ca = pathlib.Path(args.ca).read_bytes()
        except OSError as e:
            raise Failure(f"--ca {args.ca}: {e.strerror}") from None
    elif config.get("ca"):
        ca = config["ca"].encode()
    else:
        raise Failure("no CA certificate to check the manager against: pass --ca FILE")
    if not url.startswith("https://"):
        raise Failure(f"{url}: the manager's URL must start with https://")
    target = url.removeprefix("https://").rstrip("/")

    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    options = []
    if args.server_name:
        options.append(("grpc.ssl_target_name_override", args.server_name))
    return grpc.secure_channel(target, credentials, options=options)


# ---- the commands ----------------------------------------------------------


def cmd_nodes(api, stub, args):
    """Lists the nodes, as `orchctl nodes` does (fewer columns)."""
    reply = stub.ListNodes(api.pb.ListNodesRequest(), timeout=args.timeout)
    print(f"{'ID':36}  {'NAME':16}  {'STATE':8}  {'CPUS':>5}  {'MEMORY':>9}  TASKS")
    for n in reply.nodes:
        cpus = f"{n.capacity.milli_cpus / 1000:g}"
        memory = f"{n.capacity.memory_bytes // 2**20}Mi"
        state = api.node_state(n.state)
        print(f"{n.id:36}  {n.name:16}  {state:8}  {cpus:>5}  {memory:>9}  {n.task_count}")


def watch(api, stub, timeout):
    """Opens WatchEvents, to end after `timeout` seconds, and waits for the
    manager's response headers: it sends them once it has subscribed, so no
    change made after this returns can be missed."""
    events = stub.WatchEvents(api.pb.WatchEventsRequest(), timeout=timeout)
    events.initial_metadata()
    return events


def follow(api, stub, events, task, until, timeout):
    """Prints each state change of `task` that `events` brings until it
    reaches the state `until`, then the task as the manager has it. Fails if
    the task ends in another state first, or the stream's deadline passes."""
    state = api.task_state(task.state)
    print(f"task {task.id}: {state}", flush=True)
    try:
        for event in events if state != until else ():
            if event.WhichOneof("kind") != "task" or event.task.task_id != task.id:
                continue
            change = event.task
            if api.task_state(change.state) == state:
                continue  # a change of health or message only
            state = api.task_state(change.state)
            where = f" on node {change.node_id}" if change.node_id else ""
            why = f" ({change.message})" if change.message else ""
            print(f"task {task.id}: {state}{where}{why}", flush=True)
            if state == until:
                break
            if state in ENDED:
                raise Failure(f"task {task.id} ended {state} before it was {until}")
        if state != until:
            raise Failure(f"the manager ended the event stream while task {task.id} was {state}")
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        raise Failure(f"task {task.id} is {state}, not {until}, after {timeout:g} s") from None
    finally:
        events.cancel()
    done = stub.GetTask(api.pb.GetTaskRequest(id=task.id), timeout=timeout).task
    code = f", exit code {done.exit_code}" if done.HasField("exit_code") else ""
    print(f"task {done.id} is {api.task_state(done.state)} on node {done.node_id}{code}")


def cmd_run(api, stub, args):
    """Submits a task and follows it until it reaches `--until`."""
    env = {}
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep:
            raise Failure(f"--env {pair}: expected KEY=VALUE")
        env[key] = value
    spec = api.types.TaskSpec(name=args.name, image=args.image, command=args.command, env=env)
    if args.stop_grace is not None:
        # A google.protobuf.Duration: how long a stop waits before SIGKILL.
        spec.stop_grace_period.FromTimedelta(datetime.timedelta(seconds=args.stop_grace))
    # Watch first, so that no change of the new task comes before the watch.
    events = watch(api, stub, args.timeout)
    task = stub.SubmitTask(api.pb.SubmitTaskRequest(spec=spec), timeout=args.timeout).task
    print(f"submitted task {task.id}", flush=True)
    follow(api, stub, events, task, args.until, args.timeout)


def cmd_stop(api, stub, args):
    """Stops a task and follows it until it is stopped."""
    events = watch(api, stub, args.timeout)
    task = stub.StopTask(api.pb.StopTaskRequest(id=args.task), timeout=args.timeout).task
    state = api.task_state(task.state)
    if state in ENDED:
        events.cancel()
        print(f"task {task.id} had already ended: {state}")
        return
    follow(api, stub, events, task, "stopped", args.timeout)


COMMANDS = {"nodes": cmd_nodes, "run": cmd_run, "stop": cmd_stop}


# ---- the command line ------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description="A Python client of orch's Cluster API.")
    p.add_argument(
        "--config",
        metavar="FILE",
        help="the client configuration (default: $ORCH_CONFIG, else ~/.config/orch/config.toml)",
    )
    p.add_argument("--manager", metavar="URL", help="the manager, https://HOST:PORT")
    p.add_argument("--ca", metavar="FILE", help="the cluster's CA certificate, PEM")
    p.add_argument("--token", help="a client token, orch_...")
    p.add_argument(
        "--server-name",
        metavar="NAME",
        help="check the manager's certificate for this name (orch-manager) instead",
    )
    p.add_argument(
        "--proto",
        metavar="DIR",
        default=str(DEFAULT_PROTO),
        help="the directory holding orch/v1/*.proto (default: the repository's)",
    )
    p.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=60,
        help="how long a call, or a wait for a state, may take (default: 60)",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    sub.add_parser("nodes", help="list the nodes")

    run = sub.add_parser("run", help="submit a task and follow it until it reaches a state")
    run.add_argument("--name", default="", help="the task's name")
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable of the container (repeatable)",
    )
    run.add_argument(
        "--stop-grace",
        type=float,
        metavar="SECONDS",
        help="how long a stop waits before it kills the container (default: 10)",
    )
    run.add_argument(
        "--until",
        choices=["scheduled", "starting", "running", "completed", "failed"],
        default="running",
        help="the state to wait for (default: running)",
    )
    run.add_argument("image")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")

    stop = sub.add_parser("stop", help="stop a task and follow it until it is stopped")
    stop.add_argument("task", help="the task's id")
    return p.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if grpc is None:
        print(f"{PROG}: no module named 'grpc': {INSTALL}", file=sys.stderr)
        return 2
    try:
        api = load_api(args.proto)
        with connect(args) as channel:
            COMMANDS[args.cmd](api, api.ClusterStub(channel), args)
    except grpc.RpcError as e:
        message = " ".join((e.details() or "").split())
        print(f"{PROG}: {e.code().name}: {message}", file=sys.stderr)
        return 1
    except Failure as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
