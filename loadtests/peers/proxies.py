"""The proxies under test, each started from its config in this folder: the gateway and its peers.

Each factory takes the upstream's base URL, a scratch directory and the core to pin the proxy to, and returns a
:class:`~peers.processes.Process` (not started) whose ``url`` clients send to.
"""

from __future__ import annotations

import importlib.metadata
import io
import subprocess
import sys
import tarfile
from pathlib import Path

from peers.processes import BENCH, HOST, PEERS_DIR, ROOT, Process, fill, free_port, nginx_binary


def gateway(
    upstream: str,
    run: Path,
    cpu: int | None,
    name: str = "gateway",
    source: Path | None = None,
    state: str | None = None,
) -> Process:
    """The gateway of this checkout, or (``source``) the one of another tree: run from that tree with it first on
    ``PYTHONPATH``, so its ``gateway`` package is imported instead of the one installed in the venv. ``state``: its
    ``--state`` (default: none given, so ``memory://``)."""
    policy = run / "gateway-policy.yaml"
    policy.write_text(fill((PEERS_DIR / "gateway-policy.yaml").read_text(), upstream=upstream), encoding="utf-8")
    port = free_port()
    argv = [sys.executable, "-m", "gateway", "serve", "--policy", str(policy), "--host", HOST, "--port", str(port)]
    argv += ["--state", state] if state else []
    url = f"http://{HOST}:{port}"
    return Process(
        name,
        [*argv, "--log-level", "warning"],
        ready_url=url + "/readyz",
        url=url,
        log=run / f"{name}.log",
        cpu=cpu,
        env={"PYTHONPATH": str(source)} if source else None,
        cwd=source or ROOT,
    )


def checkout(ref: str, into: Path) -> tuple[Path, str]:
    """The tree of git ``ref`` extracted into ``into`` (``git archive``: unlike a worktree or a checkout it leaves
    the repository's state alone, other people work in it), and the commit it names."""
    commit = _git("rev-parse", "--verify", "--short", f"{ref}^{{commit}}").decode().strip()
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_git("archive", "--format=tar", commit)), mode="r:") as tar:
        tar.extractall(into, filter="data")
    return into, commit


def _git(*args: str) -> bytes:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def nginx_proxy(upstream: str, run: Path, cpu: int | None) -> Process:
    port = free_port()
    home = run / "nginx-proxy"
    home.mkdir(exist_ok=True)
    conf = home / "nginx.conf"
    text = fill((PEERS_DIR / "nginx-proxy.conf").read_text(), port=port, upstream=upstream.split("//", 1)[1], run=home)
    conf.write_text(text, encoding="utf-8")
    url = f"http://{HOST}:{port}"
    argv = [nginx_binary(), "-c", str(conf), "-p", str(home), "-g", "daemon off;"]
    return Process("nginx", argv, ready_url=url + "/health", url=url, log=run / "nginx-proxy.log", cpu=cpu)


def litellm(upstream: str, run: Path, cpu: int | None) -> Process:
    port = free_port()
    config = run / "litellm.yaml"
    config.write_text(fill((PEERS_DIR / "litellm.yaml").read_text(), upstream=upstream), encoding="utf-8")
    url = f"http://{HOST}:{port}"
    argv = [str(BENCH / "litellm/bin/litellm"), "--config", str(config), "--host", HOST, "--port", str(port)]
    return Process(
        "litellm",
        [*argv, "--num_workers", "1"],
        ready_url=url + "/health/liveliness",
        url=url,
        log=run / "litellm.log",
        cpu=cpu,
        # The cost map is fetched from GitHub at start unless told to use the copy in the package (no network here).
        env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        start_timeout_s=120.0,
    )


def vllm_router(upstream: str, run: Path, cpu: int | None) -> Process:
    """vLLM's Rust router with one worker (the upstream), round robin, its defaults otherwise (metrics on)."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [str(BENCH / "vllm-router/bin/vllm-router"), "--host", HOST, "--port", str(port)]
    argv += ["--worker-urls", upstream, "--policy", "round_robin", "--log-level", "warning"]
    argv += ["--prometheus-host", HOST, "--prometheus-port", str(free_port())]
    return Process("vllm-router", argv, ready_url=url + "/health", url=url, log=run / "vllm-router.log", cpu=cpu)


def aiohttp_passthrough(upstream: str, run: Path, cpu: int | None) -> Process:
    """A bare Python pass-through (``passthrough.py``): the floor of a Python proxy, with none of the features."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, str(PEERS_DIR / "passthrough.py"), "--upstream", upstream, "--port", str(port)]
    return Process("aiohttp-pass", argv, ready_url=url + "/health", url=url, log=run / "passthrough.log", cpu=cpu)


PEERS = {"nginx": nginx_proxy, "litellm": litellm, "vllm-router": vllm_router, "aiohttp-pass": aiohttp_passthrough}


def peer_status(name: str) -> tuple[str | None, str]:
    """``(version, "")`` when the peer can run here, else ``(None, why not and how to install it)``."""
    if name == "aiohttp-pass":
        return f"aiohttp {importlib.metadata.version('aiohttp')}", ""
    if name == "nginx":
        if not Path(nginx_binary()).exists():
            return None, "nginx is not installed (apt-get install nginx-light)"
        done = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
        return done.stderr.strip().removeprefix("nginx version: "), ""
    venv = BENCH / name
    binary = venv / "bin" / name
    if not binary.exists():
        package = "'litellm[proxy]'" if name == "litellm" else name
        return None, f"{binary.relative_to(ROOT)} is missing (make bench-peers: pip install {package} into .bench/)"
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    done = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown", ""
