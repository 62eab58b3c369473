"""A newcomer's first hour (issue 19), checked again on a fresh clone: what the README's "Next" commands say
about the same model must agree. `init` and `doctor` gave the demo's MLX folder two sizes (93.9 MiB, the
weights only, and 97.2 MiB, every file), and `doctor` counted a Hugging Face snapshot folder (links to
its blobs) as nearly empty."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from llmctl.memory.budget import format_bytes

from .helpers import free_port, llmctl, write_config


def _hf_style_folder(mlx_model: Path, where: Path) -> tuple[Path, int]:
    """A copy of the tiny MLX folder whose tokenizer.json is a link to a blob, as the Hugging Face cache
    lays a snapshot out; with the bytes every file of it holds, links followed."""
    folder = where / "models" / "tiny-mlx"
    shutil.copytree(mlx_model, folder)
    blobs = where / "blobs"
    blobs.mkdir()
    (folder / "tokenizer.json").rename(blobs / "tokenizer-blob")
    (folder / "tokenizer.json").symlink_to(blobs / "tokenizer-blob")
    total = sum(item.stat().st_size for item in folder.iterdir() if item.is_file())
    return folder, total


def test_init_and_doctor_give_one_size_for_an_mlx_folder(tmp_path: Path, mlx_model: Path):
    work = tmp_path / "work"
    work.mkdir()
    folder, total = _hf_style_folder(mlx_model, work)
    weights = sum(item.stat().st_size for item in folder.glob("*.safetensors"))
    assert format_bytes(weights) != format_bytes(total)  # else the test could not tell the two rules apart
    home = tmp_path / "home"
    home.mkdir()

    init = llmctl("init", "--stdout", cwd=work, env={"HOME": str(home), "HF_HOME": str(home / "hf")})
    assert init.returncode == 0, init.stderr
    sizes = re.findall(r"# found in the current folder, (.+)\n\s+- name: [^\n]+\n\s+backend: mlx", init.stdout)
    assert sizes == [format_bytes(total)], init.stdout

    write_config(work, f"instances:\n  - name: m\n    backend: mlx\n    model: {folder}\n    port: {free_port()}\n")
    doctor = llmctl("doctor", "--json", cwd=work)
    assert doctor.stdout, doctor.stderr
    findings = json.loads(doctor.stdout)["findings"]
    model = [finding["message"] for finding in findings if finding["check"] == "model"]
    assert model == [f"MLX folder, {format_bytes(total)}"], findings


def test_estimate_names_its_argument_as_the_docs_do():
    """docs/commands.md writes `llmctl estimate MODEL`; the help said `{model}`, unlike every other command."""
    result = llmctl("estimate", "--help", env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "MODEL" in usage and "{model}" not in usage, usage
