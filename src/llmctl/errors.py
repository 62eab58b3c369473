"""Every error llmctl raises on purpose, and the exit code each one means.

    LlmctlError                 exit 1: something the user asked for did not happen
    ├── ConfigError             exit 2: instances.yaml (or a name on the command line) is wrong
    ├── StartError              exit 1: an instance could not be started or never became healthy
    │   └── BinaryNotFound      exit 1: the backend's server program is not installed
    └── SupervisorError         exit 3: the background supervisor cannot be reached or started

The core raises these; the CLI turns them into one line on stderr and the exit code, in one place.
"""

from __future__ import annotations


class LlmctlError(Exception):
    """Base of every error llmctl reports to the user."""

    exit_code = 1


class ConfigError(LlmctlError):
    """The configuration, or a name given on the command line, is not valid."""

    exit_code = 2


class StartError(LlmctlError):
    """An instance could not be started, or did not become healthy in time."""


class BinaryNotFound(StartError):
    """The server program of a backend is neither configured, on PATH, nor in a known package."""


class SupervisorError(LlmctlError):
    """The supervisor for this state folder cannot be reached or started."""

    exit_code = 3
