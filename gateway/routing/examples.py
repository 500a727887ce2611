"""The example texts of a ``semantic`` rule: inline in the policy, or an ``examples_file`` next to it.

A file holds one example a line; blank lines and lines starting with ``#`` are skipped. Reading is bounded like
the policy file itself (size, example count, example length), and a file that is not a regular file (a FIFO would
block the reader forever) is refused. Every error names the file and, where one is at fault, the line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.policy.schema import SemanticSpec

MAX_EXAMPLES_FILE_BYTES = 4 * 1024 * 1024
MAX_EXAMPLES = 10_000
MAX_EXAMPLE_CHARS = 8192
"""The same bounds as inline ``examples`` (gateway/policy/schema.py)."""


class ExamplesError(ValueError):
    """An examples file that cannot be used: ``file`` (as the policy names it, resolved) and ``line`` (1-based,
    or None when the whole file is at fault)."""

    def __init__(self, file: str, line: int | None, message: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.line = line


def examples_path(spec: SemanticSpec, base_dir: str | Path) -> Path | None:
    """Where ``spec.examples_file`` is: relative paths are relative to the policy file's directory."""
    if spec.examples_file is None:
        return None
    path = Path(spec.examples_file).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def load_examples(spec: SemanticSpec, base_dir: str | Path) -> list[str]:
    """The rule's examples in order (duplicates kept: they cost nothing and keep line numbers honest). Blocking
    file I/O: run it off the event loop."""
    if spec.examples is not None:
        return list(spec.examples)
    path = examples_path(spec, base_dir)
    assert path is not None  # the schema requires one of the two
    return parse_examples(read_examples_bytes(path), str(path))


def read_examples_bytes(path: Path) -> bytes:
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise ExamplesError(name, None, "not a regular file")
            data = file.read(MAX_EXAMPLES_FILE_BYTES + 1)
    except OSError as exc:
        raise ExamplesError(name, None, f"cannot read examples: {exc.strerror or exc}") from None
    if len(data) > MAX_EXAMPLES_FILE_BYTES:
        raise ExamplesError(name, None, f"larger than {MAX_EXAMPLES_FILE_BYTES // (1024 * 1024)} MiB: refused unread")
    return data


def parse_examples(data: bytes, name: str) -> list[str]:
    examples: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8").strip().removeprefix("\ufeff" if number == 1 else "")
        except UnicodeDecodeError:
            raise ExamplesError(name, number, "not UTF-8 text") from None
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_EXAMPLE_CHARS:
            raise ExamplesError(name, number, f"example longer than {MAX_EXAMPLE_CHARS} characters")
        if len(examples) == MAX_EXAMPLES:
            raise ExamplesError(name, number, f"more than {MAX_EXAMPLES} examples")
        examples.append(line)
    if not examples:
        raise ExamplesError(name, None, "no examples (every line is blank or a '#' comment)")
    return examples
