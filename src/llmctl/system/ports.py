"""Is a TCP port free, and if not, who holds it?

Some llama-server builds start on a busy port without an error (SO_REUSEADDR), and mlx_lm.server
stays alive after failing to bind; so llmctl checks the port itself before spawning anything.
"""

from __future__ import annotations

import socket


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR so a port left in TIME_WAIT by our own last server counts as free; on Linux
        # the bind still fails while anything listens on it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", port))
        except OSError:
            return False
    return True


def listener_pid(port: int) -> int | None:
    """The PID listening on TCP `port`, when this user may see it (on Linux, another user's
    listener shows no PID; on macOS only the user's own processes are listed without root)."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    listening = (c for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port)
    return next((connection.pid for connection in listening if connection.pid is not None), None)


def port_holder(port: int) -> str | None:
    """'NAME (pid N)' of the process listening on `port`, when this user may see it."""
    import psutil

    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            if connection.pid is None:
                return None
            try:
                return f"{psutil.Process(connection.pid).name()} (pid {connection.pid})"
            except psutil.Error:
                return f"pid {connection.pid}"
    return None


def describe_busy_port(host: str, port: int) -> str:
    holder = port_holder(port)
    owner = f" by {holder}" if holder else ""
    return f"port {port} on {host} is already in use{owner}; free it or give the instance another port"
