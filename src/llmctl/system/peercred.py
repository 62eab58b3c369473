"""Who is on the other end of a Unix socket: the kernel says, and neither side takes the other's word.

The client checks the supervisor's user before it sends a config (which may hold secrets), so a
socket another user planted cannot listen in or answer for the supervisor; the supervisor checks
each client the same way. Linux answers SO_PEERCRED (pid, uid, gid); macOS and the BSDs answer
LOCAL_PEERCRED with a struct xucred (version, uid, ngroups, groups).
"""

from __future__ import annotations

import socket
import struct
import sys

SOL_LOCAL = 0
LOCAL_PEERCRED = 0x001
XUCRED_SIZE = 4 + 4 + 2 + 2 + 16 * 4  # with its padding before cr_groups


def peer_uid(connection: socket.socket, platform: str = sys.platform) -> int | None:
    """The user id of the process at the other end, or None where the platform cannot say."""
    if platform.startswith("linux"):
        _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return uid
    if platform == "darwin" or "bsd" in platform:
        raw = connection.getsockopt(SOL_LOCAL, getattr(socket, "LOCAL_PEERCRED", LOCAL_PEERCRED), XUCRED_SIZE)
        _version, uid = struct.unpack_from("=II", raw)
        return uid
    return None
