"""What runs only on macOS, checked here with the system calls mocked (no Mac in CI): a server's
death is noticed through kqueue (EVFILT_PROC / NOTE_EXIT) where there is no pidfd."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from types import SimpleNamespace
from typing import ClassVar

from llmctl.system import process


class FakeKqueue:
    """Stands in for select.kqueue: its descriptor turns readable when the watched process exits."""

    registered: ClassVar[list[SimpleNamespace]] = []

    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self.read_end

    def control(self, changes, max_events, timeout):
        (event,) = changes
        FakeKqueue.registered.append(event)
        if not _alive(event.ident):
            raise ProcessLookupError(3, "No such process")
        threading.Thread(target=self._fire_on_exit, args=(event.ident,), daemon=True).start()
        return []

    def _fire_on_exit(self, pid: int) -> None:
        """What the kernel does for a real kqueue (without reaping the child, as psutil.wait would)."""
        import time

        import psutil

        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        if not self.closed:
            os.write(self.write_end, b"x")

    def close(self) -> None:
        self.closed = True
        os.close(self.read_end)
        os.close(self.write_end)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


FAKE_SELECT = SimpleNamespace(
    kqueue=FakeKqueue,
    kevent=lambda ident, filter, flags, fflags: SimpleNamespace(ident=ident, filter=filter, flags=flags, fflags=fflags),
    KQ_FILTER_PROC=-5,
    KQ_EV_ADD=0x1,
    KQ_EV_ONESHOT=0x10,
    KQ_NOTE_EXIT=0x80000000,
)


def test_kqueue_waiter_asks_for_note_exit_once():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _fd, close = process._kqueue_exit_waiter(child.pid, FAKE_SELECT)
        event = FakeKqueue.registered[-1]
        assert (event.ident, event.filter, event.fflags) == (child.pid, -5, 0x80000000)
        assert event.flags == 0x1 | 0x10
        close()
    finally:
        child.kill()
        child.wait()


def test_kqueue_waiter_for_a_process_already_gone_is_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process._kqueue_exit_waiter(child.pid, FAKE_SELECT) is None


def test_without_pidfd_a_death_is_noticed_through_kqueue(monkeypatch):
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    monkeypatch.setattr(process, "_kqueue_exit_waiter", lambda pid: process.__dict__["_real_kq"](pid, FAKE_SELECT))
    monkeypatch.setitem(process.__dict__, "_real_kq", _REAL_KQ)
    polls = []
    real_sleep = asyncio.sleep

    async def counting_sleep(delay, *args):
        polls.append(delay)
        return await real_sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", counting_sleep)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    handle = process.ProcessHandle.of(child.pid)
    code = asyncio.run(asyncio.wait_for(process.wait_for_exit(child, handle), 10))
    assert code == 0
    assert polls == []  # woken by the descriptor, not by a poll loop


_REAL_KQ = process._kqueue_exit_waiter
