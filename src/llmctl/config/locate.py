"""Step 5 of the config pipeline, on a failure: every problem as one line naming the file, the line,
the instance and the field:

instances.yaml:14: instance 'chat', port: must be between 1024 and 65535 (got 70000)

A problem arrives as a location (a path of keys and indexes into the document) and a message: from
pydantic's verdict (`validation_lines`), or from the steps around it (`located_lines`). The line is
read back from the marks llmctl.config.yamlsource left on the parsed document.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llmctl.config.yamlsource import LineDict, LineList

Problem = tuple[tuple[Any, ...], str]  # (location, message)


def located_lines(path: Path, document: Any, problems: Iterable[Problem]) -> list[str]:
    """One located line per problem, in order."""
    return [
        located(path, line_of(document, location), describe(document, location, message))
        for location, message in problems
    ]


def validation_lines(
    path: Path,
    document: Any,
    error: ValidationError,
    root: type[BaseModel],
    sections: dict[str, type[BaseModel]],
    also: Sequence[Problem] = (),
) -> list[str]:
    """Every problem the schema found, one located line each, the most telling first; then the
    problems in `also` (found beside the schema) that do not repeat one of those lines."""
    # An unknown key is usually a misspelt one, which also explains a "missing" error: report it first.
    problems = sorted(error.errors(include_url=False), key=lambda problem: problem["type"] != "extra_forbidden")
    lines = []
    for problem in problems:
        location = _schema_location(problem["loc"])
        message = _friendly(problem, location, root, sections)
        if problem["type"] == "missing":
            location = location[:-1]
        line = located(path, line_of(document, location), describe(document, location, message))
        if line not in lines:
            lines.append(line)
    return lines + [line for line in located_lines(path, document, also) if line not in lines]


def every_line(
    path: Path,
    document: Any,
    error: ValidationError | None,
    root: type[BaseModel],
    sections: dict[str, type[BaseModel]],
    first: Sequence[Problem],
    also: Sequence[Problem],
) -> list[str]:
    """Every problem of a file, one located line each: those in `first` (an unset variable, which
    explains whatever else is wrong at its place), then the schema's verdict, then `also` (clashes,
    missing model files). A line at the place of one in `first` is left out, as is a repeat."""
    lines = located_lines(path, document, first)
    shadowed = tuple(located(path, line_of(document, loc), describe(document, loc, "")) for loc, _ in first)
    rest = (
        validation_lines(path, document, error, root, sections, also) if error else located_lines(path, document, also)
    )
    return lines + [line for line in rest if line not in lines and not line.startswith(shadowed)]


def summary(problems: list[str]) -> str:
    """The first problem, and how many more (`llmctl check` lists them all)."""
    more = len(problems) - 1
    return problems[0] + (
        f" (and {more} more problem{'s' if more > 1 else ''}: `llmctl check` lists them)" if more else ""
    )


def _schema_location(location: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds the model or union member name to some locations; keep only the real path.
    return tuple(
        step for step in location if not (isinstance(step, str) and ("[" in step or step in ("str", "list[str]")))
    )


def _friendly(
    problem: Mapping[str, Any],
    location: tuple[Any, ...],
    root: type[BaseModel],
    sections: dict[str, type[BaseModel]],
) -> str:
    kind = problem["type"]
    if kind == "extra_forbidden":
        parent = _model_for(location[:-1], root, sections)
        valid = ", ".join(name for name in parent.model_fields if name not in ("workdir", "path")) if parent else ""
        return f"unknown key {location[-1]!r}" + (f" (valid keys: {valid})" if valid else "")
    if kind == "missing":
        return f"missing required key {location[-1]!r}"
    message = str(problem["msg"]).removeprefix("Value error, ")
    if kind in ("greater_than_equal", "less_than_equal") and location and location[-1] == "port":
        return f"must be between 1024 and 65535 (got {problem.get('input')!r})"
    if (
        "input" in problem
        and kind not in ("value_error", "assertion_error")
        and not isinstance(problem["input"], (dict, list))
    ):
        message += f" (got {problem['input']!r})"
    return message


def _model_for(
    location: tuple[Any, ...], root: type[BaseModel], sections: dict[str, type[BaseModel]]
) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for step in location:
        if model is None:
            return None
        if isinstance(step, int):
            continue
        field = model.model_fields.get(step)
        if field is None:
            return None
        model = sections.get(step)
    return model


def describe(document: Any, location: tuple[Any, ...], message: str) -> str:
    """Prefix a message with the instance and field it concerns."""
    if len(location) >= 2 and location[0] == "instances" and isinstance(location[1], int):
        instances = document.get("instances") if isinstance(document, dict) else None
        name = None
        if isinstance(instances, list) and location[1] < len(instances) and isinstance(instances[location[1]], dict):
            name = instances[location[1]].get("name")
        who = f"instance {name!r}" if isinstance(name, str) else f"instance #{location[1] + 1}"
        field = ".".join(str(step) for step in location[2:])
        return f"{who}, {field}: {message}" if field else f"{who}: {message}"
    field = ".".join(str(step) for step in location)
    return f"{field}: {message}" if field else message


def located(path: Path, line: int | None, message: str) -> str:
    # One line, whatever the file holds: a key or value with a newline or control character is escaped.
    message = "".join(char if char.isprintable() else repr(char)[1:-1] for char in message)
    return f"{path}:{line}: {message}" if line else f"{path}: {message}"


def line_of(document: Any, location: Iterable[Any]) -> int | None:
    """The line of the deepest value on `location` (a path of keys and indexes) that YAML recorded."""
    line = getattr(document, "line", None)
    node = document
    for step in location:
        if isinstance(node, LineDict) and step in node:
            line = node.lines.get(step, line)
            node = node[step]
        elif isinstance(node, LineList) and isinstance(step, int) and 0 <= step < len(node):
            line = node.lines[step]
            node = node[step]
        else:
            break
    return line
