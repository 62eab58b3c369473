"""Keep secrets out of what llmctl shows: status, errors and its own log lines."""

from __future__ import annotations

import re

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
_SECRET_FLAGS = ("--api-key", "--hf-token", "--token", "--password")
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {key: (MASK if is_secret_name(key) else value) for key, value in env.items()}


def redact_argv(argv: list[str]) -> list[str]:
    """Mask the value after a secret flag (`--api-key K`) or inside one (`--api-key=K`)."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append(MASK)
            hide_next = False
        elif arg in _SECRET_FLAGS:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(flag + "=" for flag in _SECRET_FLAGS)):
            shown.append(arg.split("=", 1)[0] + "=" + MASK)
        else:
            shown.append(arg)
    return shown
