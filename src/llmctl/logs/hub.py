"""The supervisor's side of logging: one FIFO per instance, and the hub process that drains them.

The supervisor holds every FIFO open (read+write) as long as it lives, so a server's writes never
meet a closed pipe while the hub is being replaced; the hub (llmctl.logs.relay) is started, watched
and restarted from here, and adopted by a new supervisor through `hub.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmctl.logs.files import last_lines
from llmctl.system import process
from llmctl.system.files import read_regular_file

if TYPE_CHECKING:
    from llmctl.backends import Backend
    from llmctl.paths import StatePaths

log = logging.getLogger("llmctl.logs.hub")

LOG_WATCH_EVERY = 0.25
HUB_COMMAND = (sys.executable, "-S", "-I", str(Path(__file__).with_name("relay.py")))


class LogHub:
    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.folder = paths.pipes
        self.keepers: dict[str, int] = {}
        self.handle: process.ProcessHandle | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._watch: asyncio.Task[None] | None = None
        self.restarts = 0

    # -- the hub process ----------------------------------------------------------------

    def start(self) -> None:
        """Adopt the hub a previous supervisor left, or start one; keep it running from now on."""
        self.paths.ensure()
        for fifo in self.folder.glob("*.fifo"):  # FIFOs of servers a previous supervisor ran
            self._keep(fifo.stem)
        self.handle = self._recorded_hub() or self._spawn()
        self._watch = asyncio.ensure_future(self._keep_alive())

    def _recorded_hub(self) -> process.ProcessHandle | None:
        try:
            record = json.loads(read_regular_file(self.folder / "hub.json", 4096))
            handle = process.ProcessHandle(int(record["pid"]), float(record["create_time"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return handle if handle.is_alive() else None

    def _spawn(self) -> process.ProcessHandle:
        self._popen = subprocess.Popen(
            [*HUB_COMMAND, str(self.folder), str(self.paths.logs)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives the supervisor, as the servers do
            close_fds=True,
        )
        handle = process.handle_of_child(self._popen.pid)
        from llmctl.system.files import write_atomically

        record = json.dumps({"pid": handle.pid, "create_time": handle.create_time})
        try:
            write_atomically(self.folder / "hub.json", record)
        except OSError as exc:  # a full disk: the hub runs all the same; only a later supervisor cannot adopt it
            log.error("cannot record the log hub in %s: %s", self.folder / "hub.json", exc.strerror or exc)
        return handle

    async def _keep_alive(self) -> None:
        while True:
            assert self.handle is not None
            await process.wait_for_exit(self._popen, self.handle)
            self.restarts += 1
            log.warning("the log hub (pid %s) died; starting another", self.handle.pid)
            self.handle = self._spawn()

    async def stop(self) -> None:
        """Drain every FIFO and end the hub (after every server is gone)."""
        if self._watch is not None:
            self._watch.cancel()
        for name in list(self.keepers):
            self.release(name)
        if self.handle is not None and self.handle.is_alive():
            process.signal_process(self.handle, signal.SIGTERM)
            await process.wait_until_gone(self.handle, self._popen, timeout=5.0)
        with contextlib.suppress(OSError):
            (self.folder / "hub.json").unlink()

    def _nudge(self) -> None:
        if self.handle is not None:
            process.signal_process(self.handle, signal.SIGWINCH)

    # -- FIFOs ---------------------------------------------------------------------------

    def writer(self, name: str) -> int:
        """A blocking write descriptor on NAME's FIFO, for the server's stdout and stderr.

        The log file is opened first: an unusable one (a planted symlink, no space) fails this start
        with its path, instead of losing the server's output silently later."""
        os.close(process.open_log(self.paths.log_file(name)))
        self._keep(name)
        fd = os.open(self._fifo(name), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        self._nudge()
        return fd

    def note(self, name: str, message: str) -> None:
        """An llmctl line in NAME's log, beside what its server prints."""
        line = f"[llmctl {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n"
        try:
            fd = process.open_log(self.paths.log_file(name))
        except OSError:
            return
        try:
            os.write(fd, line.encode())
        except OSError:
            pass  # a full disk must not stop supervision
        finally:
            os.close(fd)

    def since_start(self, name: str) -> list[str]:
        """What NAME's server logged since llmctl last started it (its last 400 lines at most)."""
        lines = last_lines(self.paths.log_file(name), 400)
        starts = [index for index, line in enumerate(lines) if line.startswith("[llmctl") and "] starting: " in line]
        return lines[starts[-1] + 1 :] if starts else lines

    async def load_failure(self, name: str, backend: Backend) -> str:
        """Return once NAME's log says its model failed to load, with the server's own line."""
        size = -1
        while True:
            await asyncio.sleep(LOG_WATCH_EVERY)
            with contextlib.suppress(OSError):
                now = os.stat(self.paths.log_file(name)).st_size
                if now != size:
                    size = now
                    words = backend.load_failure(self.since_start(name))
                    if words:
                        await asyncio.sleep(LOG_WATCH_EVERY)  # let the rest of a traceback arrive
                        return backend.load_failure(self.since_start(name)) or words

    def release(self, name: str) -> None:
        """NAME's server is gone: let the hub drain its FIFO and close it."""
        keeper = self.keepers.pop(name, None)
        with contextlib.suppress(OSError):
            self._fifo(name).unlink()
        if keeper is not None:
            os.close(keeper)
        self._nudge()

    def _fifo(self, name: str) -> Path:
        return self.folder / f"{name}.fifo"

    def _keep(self, name: str) -> None:
        if name in self.keepers:
            return
        path = self._fifo(name)
        try:
            info = os.lstat(path)
            if not stat.S_ISFIFO(info.st_mode):
                path.unlink()
                raise FileNotFoundError
        except FileNotFoundError:
            os.mkfifo(path, 0o600)
        self.keepers[name] = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)

    def set_limits(self, max_bytes: int, backups: int) -> None:
        """Tell the hub how to rotate (it reads PIPES/limits as it opens a FIFO). A folder that cannot be
        written keeps the limits it had: logged, never raised, so a full disk cannot fail `up`'s answer."""
        from llmctl.system.files import write_atomically

        try:
            write_atomically(self.folder / "limits", f"{max_bytes} {backups}\n")
        except OSError as exc:
            log.error("cannot write the log limits %s: %s", self.folder / "limits", exc.strerror or exc)
