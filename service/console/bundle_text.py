"""The editor's text: YAML (or JSON, which is YAML too) to a bundle, and error paths to lines.

Validation errors name a dotted path (``rules.0.regions.2``); the editor shows them at their line
by walking the node tree that ``yaml.compose`` builds from the same text, so the line is the one
the editor typed, whatever its layout, comments or flow style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from service.engine.validation import BundleError, validate_bundle

#: The editor refuses texts larger than this (a bundle with very many allocations belongs in
#: the CLI, not a textarea).
MAX_TEXT = 2_000_000
#: The largest body that can carry a text of MAX_TEXT characters: each character percent-
#: encoded UTF-8 in a form (up to 12 bytes), plus the form's other fields. A longer text gets
#: the editor's "over MAX_TEXT characters" error, not a bare 413.
MAX_TEXT_BODY = 12 * MAX_TEXT + (64 << 10)
#: Bundles are a few levels deep; a hostile text nested thousands deep would exhaust Python's
#: stack in the (recursive) YAML composer.
MAX_DEPTH = 64
#: No bundle number needs more; a 5,000-digit one is beyond Python's int conversion limit, and
#: a long sexagesimal (1:2:3:…) one costs quadratic time.
MAX_NUMBER_DIGITS = 50


@dataclass
class TextCheck:
    """What the editor learns about a text: the bundle when valid, else errors with lines."""

    bundle: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when the text is a valid bundle."""
        return self.bundle is not None and not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The console API form."""
        return {"valid": self.valid, "errors": self.errors}


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML the editor will not read (too deep, a number too long, a bad date)."""


class _EditorLoader(yaml.SafeLoader):
    """The safe loader, bounded: nesting depth, number length, and every scalar that Python
    cannot convert is an error at its line instead of an exception."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # noqa: D102 - yaml.composer.Composer's
        if self._depth >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _checked_scalar(construct: Any, what: str, bounded: bool) -> Any:
    def checked(loader: _EditorLoader, node: yaml.ScalarNode) -> Any:
        if bounded and len(node.value) > MAX_NUMBER_DIGITS:
            raise _Refused(
                problem=f"numbers have at most {MAX_NUMBER_DIGITS} digits",
                problem_mark=node.start_mark,
            )
        try:
            return construct(loader, node)
        except (ValueError, TypeError, AttributeError, OverflowError):
            raise _Refused(problem=f"not a valid {what}", problem_mark=node.start_mark) from None

    return checked


for _tag, _what, _bounded in (
    ("tag:yaml.org,2002:int", "whole number", True),
    ("tag:yaml.org,2002:float", "number", True),
    ("tag:yaml.org,2002:timestamp", "date or time", False),
):
    _EditorLoader.add_constructor(
        _tag, _checked_scalar(yaml.SafeLoader.yaml_constructors[_tag], _what, _bounded)
    )


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree (for error lines) and the data of TEXT, read once."""
    loader = _EditorLoader(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


class _BundleDumper(yaml.SafeDumper):
    """Quotes every all-digit string (TACs, IMEI ranges), not only those YAML would misread."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML leaves '01234500999999' unquoted (not octal, so a string to it) but quotes
    # '01234500000000'; a mix confuses readers and other YAML parsers read it as a number.
    style = "'" if value.isdigit() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_dict(dumper: yaml.SafeDumper, value: dict) -> yaml.MappingNode:
    # A mapping holding prose (a lock-screen message's texts by language) reads one entry a
    # line; short ones (a support contact, an allocation) stay on one line.
    prose = any(isinstance(v, str) and len(v) > 40 for v in value.values())
    return dumper.represent_mapping(
        "tag:yaml.org,2002:map", value, flow_style=False if prose else None
    )


_BundleDumper.add_representer(str, _represent_str)
_BundleDumper.add_representer(dict, _represent_dict)


def dump_bundle(bundle: dict[str, Any]) -> str:
    """A bundle as editor YAML: block style, short lists of scalars on one line."""
    return yaml.dump(
        bundle,
        Dumper=_BundleDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=None,
        width=100,
    )


def _node_line(root: yaml.Node | None, path: str) -> int:
    """1-based line of the deepest node of PATH found in ROOT (1 when none is)."""
    node = root
    line = root.start_mark.line if root is not None else 0
    for part in path.split("."):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    # The key's line: for a multi-line value that is where the entry starts.
                    line, node = key.start_mark.line, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and part.isdigit():
            index = int(part)
            if index >= len(node.value):
                break
            node = node.value[index]
            line = node.start_mark.line
        else:
            break
    return line + 1


def _first_alias_line(root: yaml.Node | None) -> int | None:
    """1-based line of the first anchored node that an alias reaches again, None without any."""
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return node.start_mark.line + 1
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack.extend((key, value))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return None


def check_text(text: str) -> TextCheck:
    """Parse and validate the editor's text; every error comes with its line."""
    if len(text) > MAX_TEXT:
        return TextCheck(errors=[_error("", 1, [f"the text is over {MAX_TEXT:,} characters"])])
    try:
        root, data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # The parser's own description of the editor's text (never an internal error).
        problem = getattr(exc, "problem", None) or "the text could not be read"
        line = mark.line + 1 if mark is not None else 1
        column = mark.column + 1 if mark is not None else None
        message = problem if isinstance(exc, _Refused) else f"not valid YAML: {problem}"
        return TextCheck(errors=[_error("", line, [message], column)])
    if data is None:
        return TextCheck(errors=[_error("", 1, ["the bundle is empty"])])
    alias_line = _first_alias_line(root)
    if alias_line is not None:
        # An alias repeats a whole subtree without costing text: a few lines could make the
        # validator walk billions of entries. Bundles never need them.
        return TextCheck(
            errors=[_error("", alias_line, ["YAML anchors and aliases (& and *) are not allowed"])]
        )
    try:
        bundle = validate_bundle(data)
    except BundleError as exc:
        return TextCheck(
            errors=[
                _error(path, _node_line(root, path), messages)
                for path, messages in exc.errors.items()
            ]
        )
    return TextCheck(bundle=bundle)


def _error(path: str, line: int, messages: list[str], column: int | None = None) -> dict:
    return {"path": path, "line": line, "column": column, "messages": list(messages)}
