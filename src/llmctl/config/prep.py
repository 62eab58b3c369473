"""Step 3 of the config pipeline: prepare the parsed document for the schema.

`${VAR}` expansion, then `defaults:` merged into each instance. Both run on the parsed document
(mappings that remember their lines, llmctl.config.yamlsource), so a problem found here is reported
with the line it is on, like a schema error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from llmctl.config.yamlsource import LineDict

_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class FieldProblem(Exception):
    """A problem found outside field validation, with the path of the field it concerns.

    Not a ValueError on purpose: pydantic would swallow one into a ValidationError without its path.
    """

    def __init__(self, location: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.location = location


def prepare(
    document: LineDict,
    config_dir: Path,
    default_keys: Collection[str],
    problems: list[tuple[tuple[Any, ...], str]] | None = None,
) -> dict[str, Any]:
    """What the schema validates: variables expanded, then defaults applied (keys outside
    `default_keys` are left for the schema to report). An unset variable is a FieldProblem, or, when
    `problems` is given, a (location, message) appended to it, its `${VAR}` left as written (so the
    rest of the file is still checked: `llmctl check` lists every problem)."""
    return apply_defaults(expand_variables(document, (), problems), config_dir, default_keys)


def expand_variables(
    node: Any, location: tuple[Any, ...], problems: list[tuple[tuple[Any, ...], str]] | None = None
) -> Any:
    """`${VAR}` and `${VAR:-default}` from the environment in every string; `$$` is a literal `$`."""
    if isinstance(node, dict):
        out: Any = LineDict((key, expand_variables(value, (*location, key), problems)) for key, value in node.items())
        out.lines, out.line = node.lines, node.line
        return out
    if isinstance(node, list):
        return [expand_variables(item, (*location, index), problems) for index, item in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                problem = FieldProblem(
                    location, f"environment variable ${{{name}}} is not set (or write ${{{name}:-default}})"
                )
                if problems is None:
                    raise problem
                problems.append((location, str(problem)))
                return match.group(0)
            return default
        return value

    return _VARIABLE.sub(substitute, node)


def apply_defaults(document: dict[str, Any], config_dir: Path, default_keys: Collection[str]) -> dict[str, Any]:
    defaults = document.get("defaults") or {}
    instances = document.get("instances")
    if not isinstance(instances, list) or not isinstance(defaults, dict):
        return dict(document)  # let the schema report the wrong type
    merged = []
    for instance in instances:
        if not isinstance(instance, dict):
            merged.append(instance)
            continue
        entry = dict(instance)
        for key, value in defaults.items():
            if key not in default_keys:
                continue  # reported by the schema as an unknown key under `defaults`
            if isinstance(value, dict) and isinstance(entry.get(key, {}), dict):
                entry[key] = {**value, **entry.get(key, {})}
            else:
                entry.setdefault(key, value)
        if isinstance(entry.get("restart"), (str, bool)):
            entry["restart"] = {"policy": entry["restart"]}
        entry["workdir"] = str(config_dir)
        merged.append(entry)
    return {**document, "instances": merged}
