"""Where llmctl keeps its state, logs and control socket.

`$LLMCTL_STATE_DIR` wins (tests and scripts point it at a temp folder); otherwise the platform's user
state folder. Folders are created 0700 so other users can read neither logs nor the socket.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

CONFIG_ENV = "LLMCTL_CONFIG"
DEFAULT_CONFIG_NAME = "instances.yaml"
# sun_path is 108 bytes on Linux and 104 on macOS; leave room for the terminating NUL.
_MAX_SOCKET_PATH = 100


def private_dir(path: Path) -> Path:
    """Create `path` (0700) if it is missing; refuse it unless it is a real folder of this user that
    no one else can write to: whoever can write to it can replace the socket or the state in it.

    Raises SupervisorError (exit 3) naming the path and the fix.
    """
    from llmctl.errors import SupervisorError

    try:
        missing = [folder for folder in (path, *path.parents) if not folder.exists()]
        for folder in reversed(missing):  # each one 0700: mkdir(parents=True) would make them 0755
            folder.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise SupervisorError(
            f"cannot use the folder {path}: {exc.strerror or exc}; set $LLMCTL_STATE_DIR to a folder you can write"
        ) from None
    problem = unsafe_folder(path, info)
    if problem:
        raise SupervisorError(problem)
    return path


def unsafe_folder(path: Path, info: os.stat_result) -> str | None:
    """Why llmctl will not keep its socket and state in `path` (lstat'ed as `info`), with the fix."""
    if not stat.S_ISDIR(info.st_mode):
        return f"{path} is not a folder (a link or a file); remove it, or set $LLMCTL_STATE_DIR"
    if info.st_uid != os.getuid():
        return (
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}); llmctl will not use a folder "
            "another user controls: remove it, or set $LLMCTL_STATE_DIR to a folder of yours"
        )
    if info.st_mode & 0o022:
        return (
            f"{path} can be written by other users (mode {stat.S_IMODE(info.st_mode):o}); llmctl will not use it: "
            f"`chmod 700 {path}`"
        )
    return None


class StatePaths:
    """The files of one state folder. (A plain class: `llmctl status` imports this on its fast path,
    and dataclasses would cost it more than the rest of the module.)"""

    __slots__ = ("root",)

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"StatePaths({str(self.root)!r})"

    @classmethod
    def default(cls) -> StatePaths:
        override = os.environ.get("LLMCTL_STATE_DIR")
        if override:
            return cls(Path(override).expanduser().absolute())
        import platformdirs

        return cls(Path(platformdirs.user_state_dir("llmctl", appauthor=False)))

    def ensure(self) -> StatePaths:
        private_dir(self.root)
        private_dir(self.logs)
        private_dir(self.pipes)
        return self

    @property
    def pipes(self) -> Path:
        return self.root / "pipes"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def log_file(self, name: str) -> Path:
        # Names are validated as plain (letters, digits, - and _) before they get here.
        return self.logs / f"{name}.log"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def supervisor_lock(self) -> Path:
        return self.root / "supervisor.lock"

    @property
    def spawn_lock(self) -> Path:
        return self.root / "spawn.lock"

    @property
    def supervisor_log(self) -> Path:
        return self.root / "supervisor.log"

    @property
    def gateway_log(self) -> Path:
        return self.root / "gateway.log"

    @property
    def activity_log(self) -> Path:
        """The gateway's requests, one JSON row a line (llmctl.gateway.activity), rotated .1, .2, ..."""
        return self.logs / "activity.jsonl"

    @property
    def socket(self) -> Path:
        preferred = self.root / "supervisor.sock"
        if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH:
            return preferred
        # A deep state folder cannot hold a Unix socket path: use a short, private, per-folder one.
        import hashlib
        import tempfile

        digest = hashlib.sha256(os.fsencode(self.root)).hexdigest()[:16]
        short_dir = Path(tempfile.gettempdir()) / f"llmctl-{os.getuid()}"
        return private_dir(short_dir) / f"{digest}.sock"
