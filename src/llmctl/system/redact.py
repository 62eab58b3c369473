"""Keep secrets out of what llmctl shows: status, errors, its own log lines and supervisor.log.

A name is secret-looking when it holds AUTH, TOKEN, KEY, SECRET, PASSWORD (or PASSWD, PASS,
CREDENTIAL) in any case and spelling: `HF_TOKEN`, `api_key`, `--api-key`, `--apiKey`, `X-Auth`.
Short flags that carry a secret in the servers we run are listed by name (`-hft`: llama-server's
Hugging Face token).
"""

from __future__ import annotations

import re

# A word counts where it ends a word: HF_TOKEN, apiKey and X-Auth are secrets; --max-tokens,
# --tokenizer, --keep and author are not.
_SECRET_WORD = re.compile(
    r"(AUTH(ORI[SZ]ATION)?|TOKEN|KEY|SECRET|PASS(WORD|WD|PHRASE)?|CREDENTIALS?)(?![a-z])", re.IGNORECASE
)
_NOT_SECRET = re.compile(r"(KEY|TOKEN|PASS)[-_]?FILE", re.IGNORECASE)  # a path to a secret is not one
_SECRET_SHORT_FLAGS = ("-hft",)
MASK = "***"


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_WORD.search(name)) and not _NOT_SECRET.search(name)


def is_secret_flag(arg: str) -> bool:
    if arg in _SECRET_SHORT_FLAGS:
        return True
    return arg.startswith("--") and is_secret_name(arg)


def redact_env(env: dict[str, str]) -> dict[str, str]:
    return {key: (MASK if is_secret_name(key) else value) for key, value in env.items()}


def redact_argv(argv: list[str] | tuple[str, ...]) -> list[str]:
    """Mask the value after a secret flag (`--api-key K`) or inside one (`--api_key=K`)."""
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        flag, has_value, _ = arg.partition("=")
        if hide_next:
            shown.append(MASK)
            hide_next = False
        elif has_value and flag.startswith("-") and is_secret_flag(flag):
            shown.append(flag + "=" + MASK)
        elif is_secret_flag(arg):
            shown.append(arg)
            hide_next = True
        else:
            shown.append(arg)
    return shown


def secret_flags(argv: list[str] | tuple[str, ...]) -> list[str]:
    """The secret-carrying flags in an argv: every user's `ps` shows their values."""
    return [arg.partition("=")[0] for arg in argv if is_secret_flag(arg.partition("=")[0])]
