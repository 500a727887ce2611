"""Server processes of the benchmark (proxies, upstream), and what each one costs.

Every process is started pinned to one core (``taskset -c``), in a session of its own, and stopped with its whole
process group, so nothing outlives a run. It is ready once a URL of its answers 200. CPU time and RSS come from
/proc and are summed over the process tree (nginx's master and worker, ...); CPU time from ``utime + stime`` of
each process, which keeps the time of threads that have exited.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
ROOT = PEERS_DIR.parent.parent
BENCH = ROOT / ".bench"
HOST = "127.0.0.1"
MODEL = "assistant"
"""The model name every client sends and the upstream serves (the gateway's public name too)."""
API_KEY = "sk-bench-overhead"
"""LiteLLM's master key (``litellm.yaml``); clients send it on every path, the others ignore it."""
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process did not become ready; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def fill(template: str, **values: object) -> str:
    """Replace each ``@KEY@`` of ``template``, dropping its whole-line comments (they name the placeholders)."""
    template = "".join(line for line in template.splitlines(keepends=True) if not line.lstrip().startswith("#"))
    for key, value in values.items():
        template = template.replace(f"@{key.upper()}@", str(value))
    left = sorted(set(re.findall(r"@[A-Z_]+@", template)))
    if left:
        raise ValueError(f"unfilled placeholders {left}")
    return template


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


class Process:
    """One server process on loopback, pinned to ``cpu``; :meth:`start` returns once ``ready_url`` answers 200 (or,
    for a server that does not speak HTTP, once ``probe`` returns True)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready_url: str,
        url: str,
        log: Path,
        cpu: int | None,
        env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        cwd: Path = ROOT,
        probe: Callable[[], bool] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.ready_url = ready_url
        self.url = url
        self.log = log
        self.cpu = cpu
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.cwd = cwd
        self.probe = probe or (lambda: _answers_200(ready_url))
        self.started_s = 0.0
        self._launched = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} is not running"
        return self._proc.pid

    def start(self) -> Process:
        self.launch()
        return self.wait_ready()

    def launch(self) -> None:
        """Start the process and return at once (start several, then :meth:`wait_ready` on each)."""
        pinned = ["taskset", "-c", str(self.cpu)] if self.cpu is not None else []
        self._launched = time.monotonic()
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [*pinned, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=_environment(self.env or {}),
                start_new_session=True,
            )

    def wait_ready(self) -> Process:
        """Wait until the process is ready; stop it and raise :class:`StartError` if it never is."""
        assert self._proc is not None, f"{self.name} was not launched"
        deadline = self._launched + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self.probe():
                self.started_s = round(time.monotonic() - self._launched, 1)
                return self
            time.sleep(0.1)
        self.stop()
        raise StartError(f"{self.name} did not become ready ({self.ready_url}); its log ends:\n{self.log_tail()}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def tree(self) -> list[int]:
        """The process and its descendants, now."""
        children = _children()
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            todo.extend(children.get(pid, []))
        return pids

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process tree so far."""
        total = 0
        for pid in self.tree():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat(5))
        return total / _CLK_TCK

    def rss_mb(self) -> float:
        """Resident memory of the process tree now, MB."""
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of the process tree since it started, MB."""
        return self._status_kb("VmHWM") / 1024

    def _status_kb(self, key: str) -> int:
        total = 0
        for pid in self.tree():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            match = re.search(rf"^{key}:\s+(\d+) kB", status, re.MULTILINE)
            total += int(match.group(1)) if match else 0
        return total


def machine_busy_s() -> float:
    """CPU seconds every core together has spent running processes (user, nice, system) since boot (/proc/stat).
    Interrupt time is left out: loopback traffic's softirqs are not charged to any process."""
    user, nice, system = (int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:4])
    return (user + nice + system) / _CLK_TCK


class CpuMeter:
    """The CPU a proxy used during a block, and the noise: what processes outside the benchmark used meanwhile.
    Other jobs of a shared machine are not pinned away from the benchmark's cores; a block they took more than a
    sliver of is worth measuring again."""

    def __init__(self, proxy: Process | None, others: Sequence[Process] = ()) -> None:
        self.proxy = proxy
        self.others = others
        self._proxy = self._ours = self._busy = self._wall = 0.0

    def _ours_s(self) -> float:
        """The benchmark's CPU: the proxy, the upstream, this process and its finished children (wrk)."""
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        return own + sum(p.cpu_s() for p in (*self.others, *([self.proxy] if self.proxy else [])))

    def begin(self) -> None:
        self._proxy = self.proxy.cpu_s() if self.proxy else 0.0
        self._ours = self._ours_s()
        self._busy = machine_busy_s()
        self._wall = time.monotonic()

    def end(self) -> dict[str, float]:
        """``cpu_s``: the proxy's CPU seconds; ``foreign_cores``: cores' worth of CPU other processes used."""
        proxy = (self.proxy.cpu_s() if self.proxy else 0.0) - self._proxy
        foreign = (machine_busy_s() - self._busy) - (self._ours_s() - self._ours)
        wall = time.monotonic() - self._wall
        return {"cpu_s": round(proxy, 3), "foreign_cores": round(max(0.0, foreign) / wall, 3) if wall > 0 else 0.0}


def _environment(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without ``OTEL_*``: with no OTLP endpoint the gateway creates no exporter and its
    spans are no-ops, the default of a gateway without a collector (and no peer exports traces either). Without
    ``GATEWAY_STATE_URL`` too: a gateway's fleet state is what its path says (``--state``), ``memory://`` if none."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "GATEWAY_STATE_URL"}
    return {**kept, **extra}


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"
