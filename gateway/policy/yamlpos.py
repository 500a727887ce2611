"""Load YAML while remembering where every value came from, with the work a hostile file can cause bounded.

Policy errors must point an SRE at ``file:line:col``. PyYAML's composer keeps node marks, so we compose the node tree,
build plain Python values from it, and record the position of every value under its path of keys and indexes.

A policy may only hold plain values, lists and mappings: any other tag (``!custom``, ``!!python/object:...``,
``!!binary``, ``!!set``) is an error, never a constructor call. Composition shares an aliased node instead of copying
it, so the composer counts what the document *would* expand to and refuses a "billion laughs" at the alias that
would blow it past :data:`MAX_NODES`, before anything is copied; nesting deeper than :data:`MAX_DEPTH` (aliases
included) is refused the same way, so neither building nor validating can run out of stack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

Path = tuple[str | int, ...]

MAX_NODES = 100_000
"""Values (keys included) a document may expand to, each alias counting as a copy of what it names. Real policies
have a few thousand; a bomb asks for billions."""

MAX_DEPTH = 64
"""Nesting of lists and mappings, aliases expanded. Real policies nest about ten deep."""

_TAG = "tag:yaml.org,2002:"
_MAP, _SEQ = _TAG + "map", _TAG + "seq"
_SCALARS: dict[str, Callable[[SafeConstructor, yaml.ScalarNode], Any]] = {
    _TAG + "str": SafeConstructor.construct_yaml_str,
    _TAG + "int": SafeConstructor.construct_yaml_int,
    _TAG + "float": SafeConstructor.construct_yaml_float,
    _TAG + "bool": SafeConstructor.construct_yaml_bool,
    _TAG + "null": SafeConstructor.construct_yaml_null,
    _TAG + "timestamp": SafeConstructor.construct_yaml_timestamp,  # what a bare 2025-01-31 resolves to
}


@dataclass(frozen=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


_Where = tuple[int, int]
"""A position as stored per value: a plain tuple of ints, which the garbage collector stops tracking (a large
policy has one per value, and a collector pass that scans them all holds the GIL while a reload parses)."""


@dataclass
class PositionedDocument:
    """A parsed YAML document plus the position of each value, keyed by path."""

    data: Any
    positions: dict[Path, _Where] = field(default_factory=dict)
    key_positions: dict[Path, _Where] = field(default_factory=dict)

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
                return Position(*key)
            return Position(*found)
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


class _Mark(Protocol):
    line: int  # 0-based
    column: int  # 0-based


def _where(mark: _Mark | None) -> _Where:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _position(mark: _Mark | None) -> Position:
    return Position(*_where(mark))


class _BoundedComposer(Composer, Resolver):
    """PyYAML's safe composer, counting each node's expanded size and height as it goes.

    ``_reach`` is the deepest level the document reaches so far and ``_expanded`` how many values it expands to; an
    alias adds its target's recorded size and height instead of being walked. Events come from a subclass: libyaml's
    parser where PyYAML was built with it (about five times faster), else PyYAML's own.
    """

    peek_event: Callable[[], yaml.Event]
    dispose: Callable[[], None]

    def __init__(self, text: str) -> None:
        self._open_events(text)
        Composer.__init__(self)
        Resolver.__init__(self)
        self._expanded = 0
        self._depth = 0
        self._reach = 0
        self._shapes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded height)
        self.positions: dict[int, _Where] = {}  # id(node) -> where it starts; nodes keep no marks

    def _open_events(self, text: str) -> None:
        raise NotImplementedError

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias is PyYAML's own error
                shape = self._shapes.get(id(target))
                if shape is None:
                    raise YamlSyntaxError(
                        f"alias '*{event.anchor}' refers to a node that contains it", _position(event.start_mark)
                    )
                self._grow(shape[0], self._depth + shape[1], event, f"alias '*{event.anchor}' expands")
            return super().compose_node(parent, index)
        start, outer = self._expanded, self._reach
        self._depth += 1
        self._reach = self._depth
        self._grow(1, self._depth, event, "it expands")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._shapes[id(node)] = (self._expanded - start, self._reach - self._depth)
        if node is not None:  # marks are objects the collector would scan in every pass while a big file loads
            self.positions[id(node)] = _where(node.start_mark)
            node.start_mark = node.end_mark = None
        if outer > self._reach:
            self._reach = outer
        return node

    def _grow(self, nodes: int, reach: int, event: yaml.Event, what: str) -> None:
        self._expanded += nodes
        if reach > self._reach:
            self._reach = reach
        if self._expanded > MAX_NODES:
            raise YamlSyntaxError(
                f"document too large: {what} past {MAX_NODES} values (aliases count once per use)",
                _position(event.start_mark),
            )
        if reach > MAX_DEPTH:
            raise YamlSyntaxError(
                f"document too deep: {what} past {MAX_DEPTH} levels of nesting", _position(event.start_mark)
            )


class _PythonComposer(_BoundedComposer, Reader, Scanner, Parser):
    def _open_events(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)


_COMPOSER: type[_BoundedComposer] = _PythonComposer
try:
    from yaml._yaml import CParser
except ImportError:  # PyYAML built without libyaml: its own parser, slower
    pass
else:

    class _LibyamlComposer(_BoundedComposer, CParser):
        def _open_events(self, text: str) -> None:
            CParser.__init__(self, text)

    _COMPOSER = _LibyamlComposer


def load_positioned(text: str) -> PositionedDocument:
    """Parse one YAML document; raise :class:`YamlSyntaxError` with a position on bad syntax, duplicate keys, tags
    other than plain values, lists and mappings, or a document past :data:`MAX_NODES` or :data:`MAX_DEPTH`."""
    loader = _COMPOSER(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(
            f"invalid YAML: {exc.problem or exc}", _position(exc.problem_mark or exc.context_mark)
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"invalid YAML: {exc}", Position(1, 1)) from None
    finally:
        loader.dispose()
    doc = PositionedDocument(data=None)
    if root is None:
        return doc
    doc.data = _Builder(doc, loader.positions).build(root, ())
    return doc


class _Builder:
    """Plain values from a checked node tree; one constructor for every scalar (building one per scalar is slow)."""

    def __init__(self, doc: PositionedDocument, positions: dict[int, _Where]) -> None:
        self._doc = doc
        self._positions = positions
        self._constructor = SafeConstructor()

    def build(self, node: yaml.Node, path: Path) -> Any:
        self._doc.positions[path] = self._where(node)
        if isinstance(node, yaml.MappingNode):
            self._expect_tag(node, _MAP)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _TAG + "merge":
                    raise YamlSyntaxError("YAML merge keys (<<) are not supported in policies", self._at(key_node))
                key = self.scalar(key_node)
                if not isinstance(key, str | int | float | bool) or key is None:
                    raise YamlSyntaxError("mapping keys must be plain scalars", self._at(key_node))
                skey = str(key) if not isinstance(key, str) else key
                if skey in result:
                    raise YamlSyntaxError(f"duplicate key '{skey}'", self._at(key_node))
                self._doc.key_positions[(*path, skey)] = self._where(key_node)
                result[skey] = self.build(value_node, (*path, skey))
            return result
        if isinstance(node, yaml.SequenceNode):
            self._expect_tag(node, _SEQ)
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.scalar(node)

    def _where(self, node: yaml.Node) -> _Where:
        return self._positions[id(node)]

    def _at(self, node: yaml.Node) -> Position:
        return Position(*self._positions[id(node)])

    def _expect_tag(self, node: yaml.Node, tag: str) -> None:
        if node.tag != tag:
            raise YamlSyntaxError(_tag_refused(node.tag), self._at(node))

    def scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise YamlSyntaxError("expected a scalar", self._at(node))
        construct = _SCALARS.get(node.tag)
        if construct is None:
            raise YamlSyntaxError(_tag_refused(node.tag), self._at(node))
        try:
            return construct(self._constructor, node)
        except (ValueError, OverflowError, yaml.YAMLError) as exc:  # 2025-13-45, an int of 5000 digits
            kind = node.tag.removeprefix(_TAG)
            raise YamlSyntaxError(f"invalid {kind} '{node.value[:40]}': {exc}", self._at(node)) from None


def _tag_refused(tag: str) -> str:
    shown = "!!" + tag.removeprefix(_TAG) if tag.startswith(_TAG) else tag
    return f"YAML tag '{shown}' is not allowed: a policy holds only plain values, lists and mappings"
