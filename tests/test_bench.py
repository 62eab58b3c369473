"""The benchmark harness runs end to end on its smallest setting: every claim is measured beside its
peer and written out. No figure is asserted: a slow machine makes slow figures, not a failure."""

from __future__ import annotations

import subprocess
import sys

from .helpers import ROOT


def test_bench_harness_quick_run_writes_results_and_chart(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
        cwd=ROOT / "bench", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = (tmp_path / "RESULTS.md").read_text()
    for claim in ("`up`, 1 llama-server", "`status --json`", "kill -9", "idle CPU", "idle memory",
                  "minimal servers", "through the gateway"):  # fmt: skip
        assert claim in results, claim
    assert "Machine:" in results and "Versions:" in results and "supervisor" in results
    main_table = results.split("\n## ")[
        0
    ]  # sections after it (the GPU one, from bench/GPU.md) have tables of their own
    rows = [line for line in main_table.splitlines() if line.startswith("| ") and "claim" not in line]
    assert all(line.count("|") == 8 for line in rows) and len(rows) >= 9
    assert (tmp_path / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<!-- bench:begin -->" in (ROOT / "docs" / "benchmarks.md").read_text()  # --quick never rewrites the docs


def test_docs_table_is_the_one_in_results():
    """docs/benchmarks.md's table is what bench/run.py last wrote to bench/RESULTS.md, verbatim."""
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = page.split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    table = [line for line in block.splitlines() if line.startswith("|")]
    results = (ROOT / "bench" / "RESULTS.md").read_text()
    assert table and all(line in results.splitlines() for line in table)
