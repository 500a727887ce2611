"""``llm-gateway``: serve, check, explain, sim (DESIGN.md section 2). Wires the parts together; no logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway.policy import PolicyError, load_policy


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--policy", required=True, help="routing policy YAML")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--log-level", default="info")

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

    args = parser.parse_args(argv)
    handler = {"serve": _serve, "check": _check, "explain": _explain, "sim": _sim}[args.command]
    return handler(args)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.api.app import create_app
    from gateway.runtime import Gateway

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    app = create_app(Gateway(policy))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level.lower(),
        access_log=False,
    )
    return 0


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
    from gateway.routing.explain import explain, render_text
    from gateway.snapshot import PolicySnapshot

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
    snapshot = PolicySnapshot.build(policy)
    result = explain(
        policy.spec,
        snapshot.classifier,
        snapshot.planner,
        body,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        request_id=args.request_id,
    )
    print(json.dumps(result, indent=2) if args.json else render_text(result))
    return 0


def _sim(args: argparse.Namespace) -> int:
    from gateway.sim.server import run_sim

    run_sim(args.host, args.port, args.model, args.profile)
    return 0
