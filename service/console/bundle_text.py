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


class _BundleDumper(yaml.SafeDumper):
    """Quotes every all-digit string (TACs, IMEI ranges), not only those YAML would misread."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML leaves '01234500999999' unquoted (not octal, so a string to it) but quotes
    # '01234500000000'; a mix confuses readers and other YAML parsers read it as a number.
    style = "'" if value.isdigit() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BundleDumper.add_representer(str, _represent_str)


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
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else 1
        column = mark.column + 1 if mark is not None else None
        return TextCheck(errors=[_error("", line, [f"not valid YAML: {problem}"], column)])
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
