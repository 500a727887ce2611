"""The upstream every path is measured against, in one of four modes (:data:`MODES`).

:class:`NginxUpstream` (the default) is nginx answering with vLLM answers recorded from the simulator at start,
one port per mode (``nginx-upstream.conf``): as fast as a server gets, so it caps no peer. :class:`SimUpstream` is
the simulator itself on one port, switched between modes live with ``POST /sim/config``; it serves about 11,000
req/s on a core, which caps nginx as a proxy and vllm-router, so it is the fallback (and ``--quick``'s upstream).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from gateway.sim import ModelProfile, SimProfile, SimServer
from peers.processes import HOST, MODEL, PEERS_DIR, Process, fill, free_port, nginx_binary

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")

MODES: dict[str, dict[str, float | int]] = {
    "fast": {"ttft_s": 0.0, "per_token_s": 0.0, "output_tokens": 16},
    "slow": {"ttft_s": 0.05, "per_token_s": 0.0, "output_tokens": 16},
    "stream": {"ttft_s": 0.05, "per_token_s": 0.01, "output_tokens": 16},
    "scale": {"ttft_s": 0.1, "per_token_s": 0.1, "output_tokens": 100},
}
"""How the upstream answers in each mode (seconds, tokens): the same for the nginx upstream and the simulator."""


class NginxUpstream:
    """nginx answering with the simulator's recorded answers, one port per mode (``nginx-upstream.conf``)."""

    kind = "nginx"

    def __init__(self, run: Path, cpu: int | None) -> None:
        home = run / "nginx-upstream"
        home.mkdir(exist_ok=True)
        self.ports = {mode: free_port() for mode in MODES}
        answer, models, streams = asyncio.run(_record())
        text = fill(
            (PEERS_DIR / "nginx-upstream.conf").read_text(),
            run=home,
            echo_module=ECHO_MODULE,
            answer=_quoted(answer),
            models=_quoted(models),
            slow_delay=MODES["slow"]["ttft_s"],
            stream=_echo_stream(streams["stream"], MODES["stream"]),
            scale=_echo_stream(streams["scale"], MODES["scale"]),
            **{f"{mode}_port": port for mode, port in self.ports.items()},
        )
        conf = home / "nginx.conf"
        conf.write_text(text, encoding="utf-8")
        fast = f"http://{HOST}:{self.ports['fast']}"
        argv = [nginx_binary(), "-c", str(conf), "-p", str(home), "-g", "daemon off;"]
        log = run / "upstream.log"
        self.process = Process("upstream", argv, ready_url=fast + "/health", url=fast, log=log, cpu=cpu)

    @staticmethod
    def available() -> str:
        """ "" when this upstream can run here, else why not."""
        if not Path(nginx_binary()).exists():
            return "nginx is not installed"
        if not ECHO_MODULE.exists():
            return f"nginx's echo module is missing ({ECHO_MODULE}; apt-get install libnginx-mod-http-echo)"
        return ""

    def start(self) -> None:
        self.process.start()

    def url(self, mode: str) -> str:
        return f"http://{HOST}:{self.ports[mode]}"

    def stop(self) -> None:
        self.process.stop()


class SimUpstream:
    """The simulator as a process of its own; one port, switched between modes live with ``POST /sim/config``."""

    kind = "sim"

    def __init__(self, run: Path, cpu: int | None) -> None:
        port = free_port()
        profile = run / "sim-profile.json"
        # Every stream of the scale test runs at once, none waits for a batch slot.
        profile.write_text(json.dumps({"default": {**MODES["fast"], "max_num_seqs": 8192}}), encoding="utf-8")
        base = f"http://{HOST}:{port}"
        argv = [sys.executable, "-m", "gateway", "sim", "--host", HOST, "--port", str(port), "--model", MODEL]
        argv += ["--profile", str(profile)]
        log = run / "upstream.log"
        self.process = Process("upstream", argv, ready_url=base + "/health", url=base, log=log, cpu=cpu)
        self.mode = "fast"

    def start(self) -> None:
        self.process.start()

    def url(self, mode: str) -> str:
        if mode != self.mode:
            body = json.dumps({"set": MODES[mode]}).encode()
            request = urllib.request.Request(
                self.process.url + "/sim/config", data=body, headers={"content-type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
            self.mode = mode
        return self.process.url

    def stop(self) -> None:
        self.process.stop()


async def _record() -> tuple[str, str, dict[str, list[str]]]:
    """One answer, the model list, and the SSE events of a stream per streaming mode, from an in-process simulator."""
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Where is my refund?"}]}
    streams = {}
    async with SimServer([MODEL], SimProfile(default=ModelProfile())) as sim, aiohttp.ClientSession() as session:
        async with session.post(sim.url + "/v1/chat/completions", json=body) as response:
            answer = await response.text()
        async with session.get(sim.url + "/v1/models") as response:
            models = await response.text()
        for mode in ("stream", "scale"):
            sim.configure({"set": {"output_tokens": MODES[mode]["output_tokens"]}})
            streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
            async with session.post(sim.url + "/v1/chat/completions", json=streamed) as response:
                text = await response.text()
            streams[mode] = [event for event in text.split("\n\n") if event.strip()]
    return answer, models, streams


def _quoted(text: str) -> str:
    """``text`` inside an nginx single-quoted string; it must not name a variable (``$``), and nothing needs it."""
    if "$" in text:
        raise ValueError("a recorded answer contains '$', which nginx would read as a variable")
    return text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def _echo_stream(events: list[str], mode: dict[str, float | int]) -> str:
    """echo-module directives that send ``events`` as vLLM paces them: the role chunk and the first token after
    ``ttft_s``, each further token ``per_token_s`` later, the usage chunk and ``[DONE]`` with the last token."""
    bursts: list[list[str]] = [[]]
    seen_token = False
    for event in events:
        is_token = '"delta"' in event and '"content":""' not in event
        if is_token and seen_token:
            bursts.append([])
        seen_token = seen_token or is_token
        bursts[-1].append(event)
    directives = []
    for i, burst in enumerate(bursts):
        delay = mode["ttft_s"] if i == 0 else mode["per_token_s"]
        text = "".join(event + "\n\n" for event in burst)
        sleep = f"echo_sleep {delay}; " if delay else ""
        directives.append(f"{sleep}echo -n '{_quoted(text)}'; echo_flush;")
    return " ".join(directives)
