"""Run mlx_lm.server with this instance's share of the GPU wired limit, set before the server starts.

    LLMCTL_WIRED_LIMIT_BYTES=N python .../llmctl/backends/mlx_launch.py -- MLX_LM_SERVER_ARGS...

mlx_lm.server raises MLX's wired limit to the device's whole recommended working set, at start
and around every generation (`maybe_set_recommended_wired_limit`, which mlx_lm.generate and
mlx_lm.server import by name from mlx_lm.utils); several servers doing so over-subscribe what the
GPU driver may wire (mlx-lm #883). This launcher replaces that function wherever mlx_lm holds it
with one that sets min(share, recommended), sets that limit once, then runs
`mlx_lm.server.main()` with the given arguments in this same process. llmctl.memory.wired computes
the shares.

It never stops the server from starting: with no share (the variable absent, empty, 0 or not a
number), no Metal GPU (Linux, mlx[cpu]) or an mlx too old to set a wired limit, it prints one line
saying so and runs mlx_lm.server untouched. It prints one line either way, so the instance's log
shows what was applied.

Standalone: it runs under the Python that runs mlx_lm.server, which may not have llmctl installed,
so it imports only the standard library and (inside `main`) mlx and mlx_lm. Importing it does
nothing, and it defines no `BACKEND`, so the backend registry, which imports every module here,
does not take it for a backend.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

# Keep in step with llmctl.memory.wired.ENV_VAR (not imported: llmctl may be absent here).
ENV_VAR = "LLMCTL_WIRED_LIMIT_BYTES"
PATCHED = "maybe_set_recommended_wired_limit"
USAGE = "usage: mlx_launch.py -- MLX_LM_SERVER_ARGS..."
_GIB = 1 << 30


def parse_share(environ: Mapping[str, str]) -> tuple[int, str | None]:
    """(bytes, None), or (0, why) when the variable gives no usable share (0 means: no cap)."""
    text = environ.get(ENV_VAR, "").strip()
    if not text:
        return 0, f"no share given ({ENV_VAR} not set)"
    try:
        value = int(text)
    except ValueError:
        return 0, f"{ENV_VAR}={text!r} is not a number of bytes"
    if value <= 0:
        return 0, f"no share given ({ENV_VAR}={value})"
    return value, None


def metal_available(mx: Any) -> bool:
    """Whether this MLX runs on a Metal GPU (False for mlx[cpu] on Linux, or an mlx without the call)."""
    check = getattr(getattr(mx, "metal", None), "is_available", None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:  # an odd mlx build: no Metal is the safe reading, the server still starts
        return False


def recommended_size(mx: Any) -> int | None:
    """The device's recommended working set in bytes, as mlx_lm reads it, or None."""
    info = getattr(mx, "device_info", None) or getattr(getattr(mx, "metal", None), "device_info", None)
    try:
        value = info().get("max_recommended_working_set_size") if callable(info) else None
    except Exception:  # as above: no figure, no cap
        return None
    return int(value) if value else None


def apply_share(share: int, mx: Any, modules: Mapping[str, Any]) -> str:
    """Cap the wired limit at min(share, recommended) in this process: set it once, and replace
    `maybe_set_recommended_wired_limit` in every mlx_lm module of `modules` (name -> module, such as
    sys.modules) that holds mlx_lm.utils' function, so mlx_lm's own calls set the cap too.
    Returns the line to print; never raises (the server must start, capped or not)."""
    if not metal_available(mx):
        return "no Metal GPU here: mlx_lm.server runs without a wired-limit share"
    if share <= 0:
        return "no share given: mlx_lm.server runs without a wired-limit share"
    recommended = recommended_size(mx)
    set_limit: Callable[[int], Any] | None = getattr(mx, "set_wired_limit", None)
    if recommended is None or set_limit is None:
        return "this mlx cannot set a wired limit: mlx_lm.server runs without a wired-limit share"
    cap = min(share, recommended)

    def capped_wired_limit() -> int | None:
        """mlx_lm's maybe_set_recommended_wired_limit, capped at this instance's share: returns
        the previous limit, as the original does, so mlx_lm restores it after a generation."""
        return set_limit(cap)

    try:
        set_limit(cap)
    except Exception as exc:  # a limit the system refuses: say so and let mlx_lm do as it would
        return f"could not set the wired limit to {cap} bytes ({exc}): mlx_lm.server runs without a share"
    # Every module that imported the function by name holds its own reference to it.
    original = getattr(modules.get("mlx_lm.utils"), PATCHED, None)
    holders = [module for name, module in list(modules.items()) if name.split(".")[0] == "mlx_lm"]
    for module in holders:
        if original is not None and getattr(module, PATCHED, None) is original:
            setattr(module, PATCHED, capped_wired_limit)
    return (
        f"wired limit set to {cap} bytes ({cap / _GIB:.2f} GiB): this instance's share {share}, "
        f"the device's recommended {recommended}"
    )


def _drop_own_folder() -> None:
    """`python .../mlx_launch.py` puts this file's folder first on sys.path, where llmctl's
    backends/mlx.py would shadow the mlx package (and base.py, command.py ... any module so named)."""
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != here]


def main(argv: list[str]) -> int:
    """Apply the share from the environment, then run mlx_lm.server with the arguments after `--`."""
    if not argv or argv[0] != "--":
        print(USAGE, file=sys.stderr)
        return 2
    _drop_own_folder()
    import mlx.core as mx
    import mlx_lm.server

    share, why = parse_share(os.environ)
    if why and metal_available(mx):
        line = why + ": mlx_lm.server runs without a wired-limit share"
    else:  # no Metal is said before no share: on Linux that is the reason that matters
        line = apply_share(share, mx, sys.modules)
    print(f"[llmctl mlx_launch] {line}", file=sys.stderr, flush=True)
    # argparse in main() reads sys.argv; its program name is the server's own, as if run directly.
    sys.argv = ["mlx_lm.server", *argv[1:]]
    result = mlx_lm.server.main()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
