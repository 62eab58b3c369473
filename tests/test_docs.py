"""The documentation stands on its own (issue 19): README.md and docs/*.md link only to files that exist
in this repository (and to headings that exist), name no file outside it, never suggest an install that
would fetch another project's package from PyPI, give the two set-up commands CI runs, and state each
benchmark claim once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
# Files that are not part of this repository: the helpers' shared notes and what pointed at them.
OUTSIDE = re.compile(r"\.\./shared|/work/|\bshared/\w+\.md|DEVELOPERS|STYLE\.md|GATEWAY\.md|RELIABILITY\.md")


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_the_pages_exist_and_the_readme_links_every_one():
    names = {page.name for page in PAGES}
    for required in ("configuration", "gateway", "memory", "supervision", "security", "benchmarks"):
        assert f"{required}.md" in names, required
    readme_links = set(_links(ROOT / "README.md"))
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme_links, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_reaches_a_file_of_this_repository(page: Path):
    for target in _links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:: not a file here
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if anchor:
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {path or page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_no_text_names_a_file_outside_the_repository(page: Path):
    for number, line in enumerate(page.read_text().splitlines(), 1):
        assert not OUTSIDE.search(line), f"{page.name}:{number}: {line}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_install_line_installs_from_this_repository(page: Path):
    """`llmctl` on PyPI is an unrelated project: only an install from the clone (or a git URL) is safe."""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        for found in re.finditer(r"pip3? install ([^#\n;&|]*)", line):
            words = [word.strip("\"'`") for word in found.group(1).split()]
            for index, word in enumerate(words):
                if re.match(r"llmctl\b", word):  # the name, not a path: pip would ask the index for it
                    at_url = "@" in word or words[index + 1 : index + 2] == ["@"]
                    assert at_url, f"{page.name}:{number}: {line}"


def test_the_readme_gives_the_two_commands_ci_runs_first():
    readme = (ROOT / "README.md").read_text()
    first_block = FENCE.search(readme)
    assert first_block, "README.md has no command block"
    commands = [line.split("#")[0].strip() for line in first_block.group(0).splitlines()[1:-1]]
    assert commands == ["bash scripts/up.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert (ROOT / "scripts" / "up.sh").is_file() and (ROOT / "scripts" / "test.sh").is_file()


def _claims(table_text: str) -> list[str]:
    rows = [line for line in table_text.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    return [row.strip("|").split("|")[0].strip() for row in rows]


def test_each_benchmark_claim_is_one_row():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = page.split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    main_results = (ROOT / "bench" / "RESULTS.md").read_text().split("\n## ")[0]
    for where, claims in (("docs/benchmarks.md", _claims(block)), ("bench/RESULTS.md", _claims(main_results))):
        assert claims, where
        repeated = sorted({claim for claim in claims if claims.count(claim) > 1})
        assert not repeated, f"{where} states a claim twice: {repeated}"


def test_the_benchmark_table_refuses_a_repeated_claim():
    """bench/run.py, which writes the table, cannot write a claim twice."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec and spec.loader
    run = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))  # run.py imports its sibling `common`
    sys.modules[spec.name] = run  # its dataclasses look their module up while being defined
    try:
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(ROOT / "bench"))
        del sys.modules[spec.name]
    once = run.Figure("`status --json`, 10 instances", "ms", [0.03], "`supervisorctl status`", [0.07])
    assert "`status --json`, 10 instances" in run.table([once])
    with pytest.raises(ValueError, match="status --json"):
        run.table([once, run.Figure(once.claim, "ms", [0.04], "`supervisorctl status`", [0.09])])
