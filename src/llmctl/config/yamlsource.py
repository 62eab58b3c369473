"""Step 2 of the config pipeline: parse the text as YAML, safely, remembering where each value came from.

`yaml.safe_load` silently keeps the last of two equal keys and forgets line numbers; a config error
that cannot point at its line is half an error. This loader reports duplicate keys (with the rest of the
file's problems, llmctl.config.load) and returns dicts
and lists that know the line of each of their entries (llmctl.config.locate reads them back).
"""

from __future__ import annotations

from typing import Any

import yaml

_Loader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlSyntaxError(ValueError):
    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class LineDict(dict):
    """A mapping from YAML; `lines[key]` is the 1-based line of that key. The document's top mapping also
    has `duplicates`: (line, message) for every key given twice anywhere in it (the first one is kept)."""

    lines: dict[Any, int]
    line: int
    duplicates: list[tuple[int, str]]


class LineList(list):
    """A sequence from YAML; `lines[i]` is the 1-based line of item i."""

    lines: list[int]
    line: int


class _LineLoader(_Loader):  # type: ignore[misc, valid-type]
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []  # (line, message) of each key given twice; the first is kept

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> LineDict:
        result = LineDict()
        result.lines = {}
        result.line = node.start_mark.line + 1
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise YamlSyntaxError("a mapping key must be a plain value", key_node.start_mark.line + 1) from None
            if key in result:  # noted, not raised: `check` lists it beside every other problem
                line = key_node.start_mark.line + 1
                self.duplicates.append((line, f"duplicate key '{key}' (first on line {result.lines[key]})"))
                continue
            result[key] = self.construct_object(value_node, deep=True)
            result.lines[key] = key_node.start_mark.line + 1
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> LineList:
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.lines = [child.start_mark.line + 1 for child in node.value]
        result.line = node.start_mark.line + 1
        return result


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_sequence)


# A config is a few hundred nodes. An alias bomb (anchors nesting anchors) expands to billions once
# llmctl walks the document, so the expanded size is counted on the node graph before anything is built.
MAX_EXPANDED_NODES = 100_000


def _check_expansion(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()

    def size(node: yaml.Node) -> int:
        if id(node) in in_progress:
            raise YamlSyntaxError("an alias refers to the value that contains it", node.start_mark.line + 1)
        known = sizes.get(id(node))
        if known is not None:
            return known
        in_progress.add(id(node))
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(key) + size(value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(child) for child in node.value)
        else:
            total = 1
        in_progress.discard(id(node))
        sizes[id(node)] = total
        if total > MAX_EXPANDED_NODES:
            raise YamlSyntaxError(
                f"the document expands to more than {MAX_EXPANDED_NODES} values through its aliases "
                "(an alias bomb?); llmctl refuses it",
                node.start_mark.line + 1,
            )
        return total

    size(root)


def load_yaml(text: str) -> Any:
    try:
        loader = _LineLoader(text)
        try:
            root = loader.get_single_node()
            if root is None:
                return None
            _check_expansion(root)
            document = loader.construct_document(root)
            if isinstance(document, LineDict):
                document.duplicates = loader.duplicates
            elif loader.duplicates:  # not a mapping at the top: nothing else will be checked, so say it now
                raise YamlSyntaxError(loader.duplicates[0][1], loader.duplicates[0][0])
            return document
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        if "\t" in problem or "tab" in str(exc):
            problem += " (YAML does not allow tabs for indentation)"
        raise YamlSyntaxError(problem, line) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(str(exc).splitlines()[0], None) from None
    except RecursionError:
        raise YamlSyntaxError("the document is nested too deeply", None) from None
