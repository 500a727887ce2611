"""``llm-gateway``: serve, check, explain, sim, schema, eval, rollout, replay, cohorts (see docs/architecture.md).
Wires the
parts together; no logic of its own."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import uvicorn
import uvloop

from gateway.api.server import ConnectionLimits, ListenError, listen, server_config
from gateway.calibrate.options import add_parser as add_cohorts_parser
from gateway.fleet import StateUrlError, open_state
from gateway.policy import PolicyError, load_policy
from gateway.promote.options import add_eval_arguments
from gateway.rollouts.cli import add_rollout_arguments, run_rollout

DESCRIPTION = (
    "An OpenAI-compatible LLM gateway: serve, check, explain, sim, schema, eval, rollout, replay, cohorts "
    "(see docs/architecture.md)."
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--policy", required=True, help="routing policy YAML")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=8080, help="the OpenAI API's port (default %(default)s)")
    serve.add_argument("--log-level", default="info", help="debug, info, warning, error (default %(default)s)")
    serve.add_argument("--admin-port", type=int, help="serve /admin/* on this port only (not on --port)")
    serve.add_argument("--no-watch", action="store_true", help="do not reload when the policy file changes")
    serve.add_argument(
        "--state",
        default=os.environ.get("GATEWAY_STATE_URL", "memory://"),
        metavar="URL",
        help="fleet state shared by gateway instances: memory:// (this process only; the default) or "
        "redis://[:password@]host:port/db, rediss:// for TLS, ?prefix=NAME (env GATEWAY_STATE_URL)",
    )
    defaults = ConnectionLimits()
    serve.add_argument(
        "--max-connections",
        type=_positive(int),
        default=defaults.max_connections,
        metavar="N",
        help="open client connections per listener (default %(default)s); a new connection over it closes the "
        "oldest one with no request in progress, and gets 503 only when all are busy with requests",
    )
    serve.add_argument(
        "--header-timeout-s",
        type=_positive(float),
        default=defaults.header_timeout_s,
        metavar="S",
        help="a client must send its request headers within this, from their first byte (default %(default)s); "
        "else 408 and the connection is closed",
    )
    serve.add_argument(
        "--keepalive-s",
        type=_positive(float),
        default=defaults.keepalive_s,
        metavar="S",
        help="a connection with no request in progress (new, or its answer sent) is closed after this "
        "(default %(default)s); keep it above the idle timeout of a load balancer in front",
    )

    check = commands.add_parser("check", help="validate policy files")
    check.add_argument("paths", nargs="+")

    explain = commands.add_parser("explain", help="show the routing decision for a request body")
    explain.add_argument("--policy", required=True)
    explain.add_argument("request", help="a chat-completions JSON body (a file, or - for stdin)")
    explain.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    explain.add_argument("--request-id", default="explain", help="the id mirror sampling hashes")
    explain.add_argument("--json", action="store_true", help="machine-readable output")

    sim = commands.add_parser("sim", help="run a simulated vLLM server")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8000)
    sim.add_argument("--model", action="append", required=True, help="a served model name (repeatable)")
    sim.add_argument("--profile", help="YAML/JSON simulator profile")

    commands.add_parser("schema", help="print the JSON Schema of policy files (for editors)")

    replay = commands.add_parser("replay", help="the routing diff of a policy change on captured traffic")
    replay.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files (JSONL, or gzip-compressed)")
    replay.add_argument("--policy", required=True, metavar="NEW", help="the policy to replay the requests under")
    replay.add_argument("--baseline", metavar="OLD", help="compare with this policy (default: what happened live)")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.add_argument(
        "--max-changed",
        type=_fraction,
        metavar="FRACTION",
        help="exit 1 when more than this share of the requests (0 to 1) changes cohort, first model or error",
    )

    add_eval_arguments(commands.add_parser("eval", help="promotion gate: a candidate against its sources per cohort"))
    add_rollout_arguments(commands.add_parser("rollout", help="a running gateway's progressive rollouts (admin API)"))
    add_cohorts_parser(commands)

    args = parser.parse_args(argv)
    handlers = {
        "serve": _serve,
        "check": _check,
        "explain": _explain,
        "sim": _sim,
        "schema": _schema,
        "replay": _replay,
        "eval": _eval,
        "rollout": run_rollout,
        "cohorts": _cohorts,
    }
    handler = handlers[args.command]
    return handler(args)


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share from 0 to 1, got {text}")
    return value


def _serve(args: argparse.Namespace) -> int:
    from gateway.api.app import create_admin_app, create_app
    from gateway.runtime import Gateway

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # one line per file event in the policy's directory
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        state = open_state(args.state)
    except StateUrlError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    try:
        listeners = _listen(args)
    except ListenError as exc:
        print(f"llm-gateway: {exc}", file=sys.stderr)
        return 1
    gateway = Gateway(policy, watch_policy=not args.no_watch, state=state)
    limits = ConnectionLimits(args.max_connections, args.header_timeout_s, args.keepalive_s)
    level = args.log_level.lower()
    api = create_app(gateway, admin=args.admin_port is None)
    servers = [(uvicorn.Server(server_config(api, limits, log_level=level, lifespan="on")), listeners[0])]
    if args.admin_port is not None:
        admin = create_admin_app(gateway)
        servers.append((uvicorn.Server(server_config(admin, limits, log_level=level, lifespan="off")), listeners[1]))
    for sockets in listeners:
        for sock in sockets:
            address, port = sock.getsockname()[:2]
            logging.getLogger("gateway").info("listening on %s port %d", address, port)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve_all(servers))
    return 0


def _listen(args: argparse.Namespace) -> list[list[socket.socket]]:
    """The API's sockets, then the admin listener's: all bound, or none (a port in use is a :class:`ListenError`)."""
    listeners = [listen(args.host, args.port)]
    if args.admin_port is not None:
        try:
            listeners.append(listen(args.host, args.admin_port))
        except ListenError:
            for sock in listeners[0]:
                sock.close()
            raise
    return listeners


async def _serve_all(servers: list[tuple[uvicorn.Server, list[socket.socket]]]) -> None:
    """Run the API (and the optional admin listener) in one event loop; when one stops, stop the other."""
    tasks = [asyncio.create_task(server.serve(sockets=sockets)) for server, sockets in servers]
    while not all(server.started for server, _ in servers) and not any(task.done() for task in tasks):
        await asyncio.sleep(0.05)
    tune_gc()
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server, _ in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)


GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once serving: move everything alive after start-up (modules, policy, app) out of the collector's sight and
    collect the young generation less often.

    Each request allocates a few hundred short-lived containers, so with the default threshold (700) a collection
    ran every few requests, and every hundredth or so was a full one that walked the ~90,000 long-lived start-up
    objects again (34-43 ms, a stall for every request in flight). In the overhead benchmark this was worth 7-12 %
    of throughput and most of the p99 at concurrency 64. Reference cycles are still collected, in larger batches.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(exc, file=sys.stderr)
            failed = True
        else:
            print(f"{path}: ok (version {policy.version})")
    return 1 if failed else 0


def _explain(args: argparse.Namespace) -> int:
    from gateway.routing.explain import render_text
    from gateway.routing.explain_offline import explain_offline

    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text(encoding="utf-8")
        body = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"{args.request}: cannot read a JSON request body: {exc}", file=sys.stderr)
        return 2
    if not isinstance(body, dict):
        print(f"{args.request}: the request body must be a JSON object", file=sys.stderr)
        return 2
    headers = dict(h.split(":", 1) for h in args.header if ":" in h)
    stripped = {k.strip(): v.strip() for k, v in headers.items()}
    result, warning = asyncio.run(explain_offline(policy, body, headers=stripped, request_id=args.request_id))
    if warning is not None:  # still exit 0: the answer is what a gateway without its embedder would do
        print(f"llm-gateway explain: semantic rules taken as false: {warning}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else render_text(result))
    return 0


def _schema(args: argparse.Namespace) -> int:
    from gateway.policy.jsonschema import policy_json_schema

    print(json.dumps(policy_json_schema(), indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gateway.promote.command import run_eval

    return run_eval(args)


def _replay(args: argparse.Namespace) -> int:
    from gateway.replay.command import run_replay

    return run_replay(args)


def _cohorts(args: argparse.Namespace) -> int:
    from gateway.calibrate.command import run

    return run(args)


def _sim(args: argparse.Namespace) -> int:
    from gateway.sim.server import run_sim

    run_sim(args.host, args.port, args.model, args.profile)
    return 0
