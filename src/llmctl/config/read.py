"""Step 1 of the config pipeline: the file's text, read safely.

A config file is a regular file (a link to one is fine: dotfiles managers make them) of at most
4 MiB, in UTF-8. Anything else is a ConfigError of one line naming the file and, where it is
missing, the ways to give one. The cache reads the same bytes through `read_bytes`, so both agree
on what a config file may be.
"""

from __future__ import annotations

from pathlib import Path

from llmctl.errors import ConfigError
from llmctl.paths import CONFIG_ENV, DEFAULT_CONFIG_NAME
from llmctl.system.files import read_regular_file

MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_bytes(path: Path) -> bytes:
    """The file's bytes; an OSError (missing, not a regular file, too large) as the system words it."""
    return read_regular_file(path, MAX_CONFIG_BYTES, follow_symlinks=True)  # a dotfiles link is fine


def read_config(path: Path) -> str:
    """The file's text; any problem is a ConfigError of one line."""
    try:
        return read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (give one with -f/--file or ${CONFIG_ENV}, "
            f"or create ./{DEFAULT_CONFIG_NAME})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config file: not UTF-8 ({exc.reason} at byte {exc.start})") from None
