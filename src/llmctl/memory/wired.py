"""Shares of the GPU wired limit on a Mac, one per MLX server, so several cannot over-subscribe it.

Every mlx_lm.server raises MLX's wired limit to the device's recommended working set for itself
(`mlx_lm.utils.maybe_set_recommended_wired_limit`, at start and around each generation). Two or
three servers that each wire up to the whole limit together ask the GPU driver for more than it
may wire, and users report hangs and IOGPU kernel panics (ml-explore/mlx-lm #883). llmctl gives
each MLX instance a share instead: `wired_shares` divides the system's limit, `share_env` is what
the runner puts in the instance's environment, and llmctl/backends/mlx_launch.py applies it inside
the server's own Python before mlx_lm.server starts. `shares_problem` is `llmctl doctor`'s warning.

All figures are bytes. Nothing here reads the system: callers pass the limit (llmctl.memory.measure
reads `iogpu.wired_limit_mb`), so the arithmetic is tested anywhere with recorded values.
"""

from __future__ import annotations

from llmctl.memory.budget import format_bytes

# The variable mlx_launch.py reads (absent or 0: no cap). Keep in step with mlx_launch.ENV_VAR.
ENV_VAR = "LLMCTL_WIRED_LIMIT_BYTES"
# `iogpu.wired_limit_mb` = 0 means macOS's own default, about 75 % of memory (what llmctl's
# default memory budget on a Mac assumes too, llmctl.memory.measure.default_budget).
MACOS_DEFAULT_WIRED_FRACTION = 0.75
_MIB = 1 << 20


def shares_on(setting: bool | None, macos: bool) -> bool:
    """Whether MLX servers get wired-limit shares: the config's `mlx_wired_shares` when set
    (True/False), else on macOS only (elsewhere MLX has no Metal and nothing is wired)."""
    return macos if setting is None else setting


def system_limit(wired_limit: int | None, total_memory: int) -> int:
    """The GPU wired limit in bytes: `iogpu.wired_limit_mb` when set (`wired_limit`, bytes, None
    when the sysctl is 0 or unreadable), else macOS's default of about 75 % of `total_memory`."""
    return wired_limit if wired_limit else int(total_memory * MACOS_DEFAULT_WIRED_FRACTION)


def wired_shares(needs: dict[str, int], limit: int) -> dict[str, int]:
    """Each MLX instance's share of the wired limit, in bytes, by instance name.

    `needs`: instance name -> bytes it needs wired (its estimate, or its measured peak when that is
    larger); 0 or less means unknown. `limit`: the system's wired limit in bytes (`system_limit`).

    An unknown need counts as an equal part of the limit (limit / number of instances): a guess,
    but one that keeps every share a real cap (a share of 0 would mean "no cap" to the launcher).
    When the needs fit, each gets its need plus a part of what is spare in proportion to its need;
    when they do not, each gets limit * need / total. Rounded down, so the shares never add up to
    more than the limit. Raises ValueError when `limit` is not positive.
    """
    if limit <= 0:
        raise ValueError(f"the wired limit must be positive (got {limit})")
    if not needs:
        return {}
    fair = limit // len(needs)
    counted = {name: need if need > 0 else fair for name, need in needs.items()}
    total = sum(counted.values())
    if total <= limit:
        spare = limit - total
        return {name: need + spare * need // total for name, need in counted.items()}
    return {name: limit * need // total for name, need in counted.items()}


def shares_problem(needs: dict[str, int], limit: int) -> str | None:
    """One line when the known needs (bytes by name, 0 or less: unknown) exceed the wired limit
    (bytes), naming the figures and the fix; None when they fit."""
    known = {name: need for name, need in needs.items() if need > 0}
    total = sum(known.values())
    if total <= limit:
        return None
    parts = ", ".join(f"{name} ~{format_bytes(need)}" for name, need in known.items())
    at_least = -(-total // _MIB)  # MiB, rounded up
    return (
        f"the MLX instances need {format_bytes(total)} of GPU-wired memory together ({parts}), over the "
        f"system's wired limit of {format_bytes(limit)}: each gets a proportional share and may run slowly; "
        f"run fewer MLX models at once (make some on_demand), or raise the limit with "
        f"`sudo sysctl iogpu.wired_limit_mb={at_least}` (until reboot; leave macOS some memory)"
    )


def share_env(share: int | None) -> dict[str, str]:
    """The environment that gives an MLX server its share (bytes; None: no share, so nothing),
    for the runner to merge into the instance's environment before it spawns."""
    return {ENV_VAR: str(share)} if share is not None else {}
