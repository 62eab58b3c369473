"""The memory budget `up` checks before starting anything: all or nothing, with the figures."""

from __future__ import annotations

from llmctl.errors import BudgetExceeded


class Candidate:
    """An instance about to start and its estimate. (Not a dataclass: `llmctl status` imports this
    module for format_bytes, and dataclasses cost it 5 ms.)"""

    __slots__ = ("estimate", "name")

    def __init__(self, name: str, estimate: int | None) -> None:
        self.name, self.estimate = name, estimate


def format_bytes(value: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value} B"


def check_budget(
    candidates: list[Candidate], in_use: int, budget: int | None, config_path: str | None, pool: str | None = None
) -> None:
    """Raise BudgetExceeded naming every figure when the candidates' estimates would not fit.

    Instances with no estimate (an Ollama model before its server runs) cannot be checked and
    are let through: refusing them would make the budget a guess. No budget in the config: the
    platform's default (llmctl.memory.default_budget). `pool`: a GPU pool ("gpu:0") checked against
    gpu_memory_budget, whose budget is always given.
    """
    setting = "gpu_memory_budget" if pool else "memory_budget"
    source = f"{setting} in {config_path}"
    if budget is None:
        from llmctl.memory.measure import IS_MACOS, default_budget

        budget = default_budget()
        source = "the default: " + ("the GPU wired limit" if IS_MACOS else "90% of memory")
    needed = sum(candidate.estimate or 0 for candidate in candidates)
    if not needed or in_use + needed <= budget:
        return
    parts = ", ".join(f"{c.name} ~{format_bytes(c.estimate)}" for c in candidates if c.estimate)
    raise BudgetExceeded(
        f"not starting anything: the estimate is {format_bytes(needed)} ({parts}), instances already use "
        f"{format_bytes(in_use)}, and the {'memory budget' if not pool else pool + ' budget'} is "
        f"{format_bytes(budget)} ({source}); free memory, raise {setting}, or use --force"
    )
