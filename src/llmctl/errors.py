"""Every error llmctl raises on purpose, the exit code each one means, and its name on the wire.

    LlmctlError                 exit 1: something the user asked for did not happen
    ├── ConfigError             exit 2: instances.yaml (or a name on the command line) is wrong
    │   └── BadRequest          exit 2: a control request the supervisor cannot read
    ├── StartError              exit 1: an instance could not be started or never became healthy
    │   ├── BinaryNotFound      exit 1: the backend's server program is not installed
    │   └── BudgetExceeded      exit 1: the instances would not fit the memory budget
    └── SupervisorError         exit 3: the background supervisor cannot be reached or started

The core raises these; the CLI turns them into one line on stderr (or JSON on stdout under --json)
and the exit code, in one place. Across the control socket an error travels as its `kind`, so the
client raises the same class the supervisor did (`from_kind`).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing`: importing typing costs `llmctl status` 4 ms
if TYPE_CHECKING:
    from typing import ClassVar


class LlmctlError(Exception):
    """Base of every error llmctl reports to the user."""

    exit_code: ClassVar[int] = 1
    kind: ClassVar[str] = "error"


class ConfigError(LlmctlError):
    """The configuration, or a name given on the command line, is not valid."""

    exit_code = 2
    kind = "config"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]  # every problem found, one line each (`check` shows them all)


class BadRequest(ConfigError):
    """A control request that is not JSON, not an object, or names no known operation."""

    kind = "bad_request"


class StartError(LlmctlError):
    """An instance could not be started, or did not become healthy in time."""

    kind = "start"


class BinaryNotFound(StartError):
    """The server program of a backend is neither configured, on PATH, nor in a known package."""

    kind = "binary_not_found"


class BudgetExceeded(StartError):
    """Starting these instances would take more memory than the budget allows."""

    kind = "budget"


class SupervisorError(LlmctlError):
    """The supervisor for this state folder cannot be reached or started."""

    exit_code = 3
    kind = "supervisor"


class InternalError(LlmctlError):
    """A bug: an exception nobody raised on purpose. Reported, never fatal to the supervisor."""

    kind = "internal"


def _all_kinds() -> dict[str, type[LlmctlError]]:
    found: dict[str, type[LlmctlError]] = {}
    pending: list[type[LlmctlError]] = [LlmctlError]
    while pending:
        cls = pending.pop()
        found[cls.kind] = cls
        pending.extend(cls.__subclasses__())
    return found


def from_kind(kind: object, message: str) -> LlmctlError:
    """The error a supervisor reported, as the class it raised (the base class for an unknown kind)."""
    cls = _all_kinds().get(kind if isinstance(kind, str) else "", LlmctlError)
    return cls(message)


def as_payload(exc: LlmctlError) -> dict[str, object]:
    return {"kind": exc.kind, "message": str(exc), "exit_code": exc.exit_code}
