"""Keys read from where `ps` cannot see them: an environment variable or a file only its owner can read."""

from __future__ import annotations

import os
from pathlib import Path

from llmctl.errors import ConfigError
from llmctl.system.files import read_regular_file

MAX_KEY_BYTES = 4096


def read_secret(label: str, env_name: str | None, file: str | None, environ: dict[str, str]) -> str | None:
    """The secret named by `env_name` (an environment variable) or `file` (a 0600 file), or None when
    neither is given. `label` names the setting in errors (e.g. "gateway.api_key").

    Raises ConfigError when the variable is unset or empty, or the file is missing, empty, not a
    regular file, or readable by others (`chmod 600` is the fix)."""
    if env_name:
        value = environ.get(env_name)
        if not value:
            raise ConfigError(f"{label}_env names ${env_name}, which is not set")
        return _sendable(value, f"{label}_env ${env_name}")
    if not file:
        return None
    path = os.path.expanduser(file)
    try:
        if os.stat(path).st_mode & 0o077:
            raise ConfigError(f"{label}_file {path} can be read by others: `chmod 600 {path}`")
        value = read_regular_file(Path(path), MAX_KEY_BYTES, follow_symlinks=True).decode().strip()
    except OSError as exc:
        raise ConfigError(f"{label}_file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}_file {path} is not text") from None
    if not value:
        raise ConfigError(f"{label}_file {path} is empty")
    return _sendable(value, f"{label}_file {path}")


def _sendable(value: str, where: str) -> str:
    """A key must be visible ASCII (RFC 9110 §5.5 field values, as `Authorization: Bearer` and `X-Api-Key`
    carry it; llmctl.gateway.edges.api_key_from refuses anything else): one that no client could ever send
    would lock everyone out without a word. Raises ConfigError."""
    if not all("!" <= char <= "~" for char in value):
        raise ConfigError(f"{where}: the key holds spaces or characters outside visible ASCII; no client could send it")
    return value
