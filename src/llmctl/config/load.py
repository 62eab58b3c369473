"""The config pipeline, run once in order: read -> parse -> prepare -> validate -> locate.

Each step is a function of the one before: the file's text (llmctl.config.read), the document with
its line marks (llmctl.config.yamlsource), the document prepared for the schema (llmctl.config.prep),
the validated config (llmctl.config.schema), and, when anything is wrong, every problem as one line
naming the file, the line, the instance and the field (llmctl.config.locate):

    instances.yaml:14: instance 'chat', port: must be between 1024 and 65535 (got 70000)

Beside the schema run the backend checks, which look at the file system (does the GGUF exist?);
their problems are located with the schema's, so `llmctl check` lists every problem at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from llmctl.config.locate import Problem, every_line, located, summary
from llmctl.config.prep import prepare
from llmctl.config.read import read_config
from llmctl.config.schema import SECTION_MODELS, ConfigModel, DefaultsModel, validate
from llmctl.config.yamlsource import LineDict, YamlSyntaxError, load_yaml
from llmctl.errors import ConfigError
from llmctl.spec import Config, InstanceSpec


def load_config(path: Path, check_backends: bool = True) -> Config:
    """Read, expand and validate a config file; any problem is a ConfigError of one line."""
    return parse_config(read_config(path), path, check_backends)


def parse_config(text: str, path: Path, check_backends: bool = True) -> Config:
    """The validated config; `check_backends=False` skips what only a start needs (the model file),
    for `llmctl doctor`, which reports those itself beside everything else. Any problem is a
    ConfigError whose `problems` hold every problem of the file, one located line each."""
    document = _parse(text, path)
    duplicates = [located(path, line, message) for line, message in getattr(document, "duplicates", [])]
    unset: list[Problem] = []
    prepared = prepare(document, path.parent, DefaultsModel.model_fields, unset)
    verdict = validate(prepared, str(path))
    # Every problem at once: the instances that are valid on their own get the backend checks too.
    beside = verdict.problems + (_backend_problems(verdict.valid) if check_backends else [])
    if verdict.config is None or beside or unset or duplicates:
        lines = duplicates + every_line(path, document, verdict.error, ConfigModel, SECTION_MODELS, unset, beside)
        raise ConfigError(summary(lines), lines)
    return verdict.config


def _parse(text: str, path: Path) -> LineDict:
    """The document with its line marks; a ConfigError unless its top level is a mapping."""
    try:
        document = load_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError(located(path, exc.line, str(exc))) from None
    if document is None:
        raise ConfigError(f"{path}: the file is empty; it needs an `instances:` list")
    if not isinstance(document, LineDict):
        raise ConfigError(located(path, 1, "the top level must be a mapping with an `instances:` list"))
    return document


def _backend_problems(instances: Iterable[tuple[int, InstanceSpec]]) -> list[Problem]:
    """What each instance's backend finds wrong with it (a model file not found, ...), not yet located."""
    from llmctl.backends import backend_for

    problems = []
    for index, instance in instances:
        problem = backend_for(instance.backend).check_spec(instance)
        if problem:
            field, message = problem
            problems.append((("instances", index, field), message))
    return problems
