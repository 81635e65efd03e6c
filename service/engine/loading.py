"""Read the seed bundle from a folder of YAML files and validate it.

The only file reading of the engine besides :mod:`service.engine.cases`. Errors name the file
they come from (``10-sanctions.yaml:rules.0.regions.2``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from service.engine.validation import BundleError, validate_bundle

try:  # the C loader is several times faster on big allocation lists
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_MERGED_LISTS = ("rules", "distributors", "exceptions")  # exceptions: SPEC §12.2


def read_bundle_dir(
    path: str | Path,
) -> tuple[dict[str, Any], dict[str, list[tuple[str, int]]], dict[str, str]]:
    """Read and merge the ``*.yaml`` files of ``path`` without validating.

    Returns the merged data, where each merged ``rules``/``distributors``/``exceptions`` entry
    came from
    (file name, index in that file) and which file set each other top-level key.
    """
    folder = Path(path)
    files = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    if not files:
        raise BundleError({str(folder): ["no policy files (*.yaml) found"]})
    merged: dict[str, Any] = {}
    origin: dict[str, list[tuple[str, int]]] = {key: [] for key in _MERGED_LISTS}
    setters: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for file in files:
        try:
            doc = yaml.load(file.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            errors[file.name] = [f"not valid YAML: {exc}"]
            continue
        if doc is None:
            continue
        if not isinstance(doc, dict):
            errors[file.name] = ["must hold a mapping at the top level"]
            continue
        for key, value in doc.items():
            if key in _MERGED_LISTS:
                if not isinstance(value, list):
                    errors[f"{file.name}:{key}"] = ["must be a list"]
                    continue
                merged.setdefault(key, []).extend(value)
                origin[key].extend((file.name, i) for i in range(len(value)))
            else:
                # Later files override earlier ones, like a conf.d folder: a local
                # 99-override.yaml can change a setting without editing the shipped files.
                merged[key] = value
                setters[str(key)] = file.name
    if errors:
        raise BundleError(errors)
    return merged, origin, setters


def _locate(path: str, origin: dict[str, list[tuple[str, int]]], setters: dict[str, str]) -> str:
    """Rewrite a merged-bundle path into ``file:path-in-that-file``."""
    parts = path.split(".")
    if parts[0] in origin and len(parts) > 1 and parts[1].isdigit():
        entries = origin[parts[0]]
        i = int(parts[1])
        if i < len(entries):
            file, local = entries[i]
            return ".".join([f"{file}:{parts[0]}", str(local), *parts[2:]])
    if parts[0] in setters:
        return f"{setters[parts[0]]}:{path}"
    return path


def load_bundle_dir(path: str | Path) -> dict[str, Any]:
    """Load the seed bundle: every ``*.yaml`` in ``path`` (not sub-folders), merged in file-name
    order — ``rules``, ``distributors`` and ``exceptions`` concatenated, any other top-level
    key taken from the *last* file that sets it — then validated.

    Raises :class:`BundleError`: ``{"<file>": [msg]}`` for unreadable YAML; validation errors keyed
    ``<file>:<path inside that file>`` (``10-sanctions.yaml:rules.0.regions.2``).
    """
    merged, origin, setters = read_bundle_dir(path)
    try:
        return validate_bundle(merged)
    except BundleError as exc:
        located: dict[str, list[str]] = {}
        for key, messages in exc.errors.items():
            located.setdefault(_locate(key, origin, setters), []).extend(messages)
        raise BundleError(located) from None
