"""Issue 19, external servers (hidden cases): an external URL on another host raises no "other machines can
reach it" warning: llmctl makes nothing listen there."""

from __future__ import annotations

from pathlib import Path

from .helpers import llmctl, write_config

UNROUTABLE = "http://10.255.255.1:9999"  # a private address no host answers on: connects hang or are refused


def _remote(name: str, start_timeout: float) -> str:
    return (
        f"\n  - name: {name}\n    backend: external\n    kind: llama.cpp\n    url: {UNROUTABLE}\n"
        f"    health: {{interval: 1, timeout: 1, start_timeout: {start_timeout}}}\n"
    )


def test_check_warns_of_no_exposure_for_an_external_server_elsewhere(tmp_path: Path):
    write_config(tmp_path, "instances:" + _remote("far", 5))
    check = llmctl("check", cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert "other machines can reach it" not in check.stderr, check.stderr
