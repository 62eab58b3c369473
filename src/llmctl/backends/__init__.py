"""The backend registry. Every module in this package that defines `BACKEND` is one backend, so
adding a backend means adding one file here."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING

from llmctl.backends.base import Backend, NotReady
from llmctl.errors import StartError
from llmctl.memory.pools import Device, Estimate

if TYPE_CHECKING:
    from llmctl.spec import InstanceSpec


@cache
def _registry() -> dict[str, Backend]:
    found: dict[str, Backend] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        backend = getattr(module, "BACKEND", None)
        if isinstance(backend, Backend):
            found[backend.name] = backend
    return found


def backend_names() -> list[str]:
    return list(_registry())


def backend_for(name: str) -> Backend:
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (valid: {', '.join(backend_names())})") from None


def command_line(spec: InstanceSpec, binaries: dict[str, str]) -> list[str]:
    """The server's argv; StartError when it cannot be built, an adapter's bug included (it is this
    instance's start failure, never the caller's)."""
    backend = backend_for(spec.backend)
    try:
        return backend.command(spec, backend.find_program(binaries.get(spec.backend)))
    except StartError:
        raise
    except Exception as exc:
        raise StartError(f"the {spec.backend} adapter failed: {exc!r}") from None


def safe_estimate(spec: InstanceSpec) -> int | None:
    """The backend's memory estimate, or None: a model file that is odd in any way (a string where a
    number belongs, a truncated header) costs the estimate, never the command that asked."""
    try:
        return backend_for(spec.backend).estimate_memory(spec)
    except Exception:
        return None


def safe_pool_estimate(spec: InstanceSpec, devices: list[Device]) -> Estimate | None:
    """The backend's estimate by memory pool on these GPUs, or None (never an exception, as above)."""
    try:
        return backend_for(spec.backend).estimate(spec, devices)
    except Exception:
        return None


__all__ = [
    "Backend",
    "NotReady",
    "backend_for",
    "backend_names",
    "command_line",
    "safe_estimate",
    "safe_pool_estimate",
]
