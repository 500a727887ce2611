"""Load YAML while remembering where every value came from.

Policy errors must point an SRE at ``file:line:col``. PyYAML's composer keeps node marks, so we compose the node tree,
build plain Python values from it, and record the position of every value under its path of keys and indexes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class PositionedDocument:
    """A parsed YAML document plus the position of each value, keyed by path."""

    data: Any
    positions: dict[Path, Position] = field(default_factory=dict)
    key_positions: dict[Path, Position] = field(default_factory=dict)

    def locate(self, path: Path, *, at_key: bool = False) -> Position:
        """Where ``path`` is, or its nearest ancestor (pydantic paths may go deeper than the document).

        A scalar is located at its value; a mapping or list (or any value when ``at_key``) at the key naming it,
        which is the line an SRE reads as "this entry".
        """
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            found = self.positions.get(prefix)
            if found is None:
                continue
            key = self.key_positions.get(prefix)
            if key is not None and (at_key or end < len(path) or self._is_collection(prefix)):
                return key
            return found
        return Position(1, 1)

    def _is_collection(self, path: Path) -> bool:
        node = self.data
        for part in path:
            node = node[part]
        return isinstance(node, dict | list)


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, position: Position) -> None:
        super().__init__(message)
        self.position = position


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def load_positioned(text: str) -> PositionedDocument:
    """Parse one YAML document; raise :class:`YamlSyntaxError` with a position on bad syntax or duplicate keys."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        raise YamlSyntaxError(f"invalid YAML: {exc.problem or exc}", pos) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", Position(1, 1)) from None
    doc = PositionedDocument(data=None)
    if root is None:
        return doc
    doc.data = _build(root, (), doc.positions, doc.key_positions)
    return doc


def _build(node: yaml.Node, path: Path, positions: dict[Path, Position], keys: dict[Path, Position]) -> Any:
    positions[path] = _mark(node)
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlSyntaxError("YAML merge keys (<<) are not supported in policies", _mark(key_node))
            key = _scalar(key_node)
            if not isinstance(key, str | int | float | bool) or key is None:
                raise YamlSyntaxError("mapping keys must be plain scalars", _mark(key_node))
            skey = str(key) if not isinstance(key, str) else key
            if skey in result:
                raise YamlSyntaxError(f"duplicate key '{skey}'", _mark(key_node))
            keys[(*path, skey)] = _mark(key_node)
            result[skey] = _build(value_node, (*path, skey), positions, keys)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), positions, keys) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise YamlSyntaxError("expected a scalar", _mark(node))
    constructor = yaml.SafeLoader(node.value if isinstance(node.value, str) else "")
    try:
        return constructor.construct_object(node, deep=True)
    finally:
        constructor.dispose()
