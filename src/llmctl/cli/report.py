"""What `up`, `restart` and `wait` print once the supervisor says the instances settled.

Typer-free, so the fast path of `llmctl up` (llmctl.__main__) uses it too; Rich only on a terminal,
and only once there is something to show.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from llmctl.cli import render
from llmctl.control import service, statusdoc
from llmctl.errors import LlmctlError
from llmctl.paths import StatePaths

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
FAILURE_LOG_LINES = 20


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def report_settled(
    paths: StatePaths,
    names: list[str],
    actions: dict[str, str] | None,
    json_output: bool,
    *,
    wait: bool,
    timeout: float | None,
) -> int:
    """Wait (or not) for the supervisor to say the instances settled; report; the exit code.

    Instances left to start on demand are not waited for: the gateway starts them."""
    on_demand = [name for name, action in (actions or {}).items() if action == "on demand"]
    names = [name for name in names if name not in on_demand]
    if not json_output:
        for name in on_demand:
            print(f"{name}: on demand (the gateway starts it at its first request)", flush=True)
    if actions is not None and not names:
        if json_output:
            render.write_json(
                statusdoc.with_version({"ok": True, "timed_out": False, "instances": [], "actions": actions})
            )
        return 0
    progress = _UpProgress(enabled=wait and not json_output)
    try:
        result = service.wait(paths, names, timeout if wait else 0, progress.update if progress.enabled else None)
    except KeyboardInterrupt:
        progress.close()
        _stderr("llmctl: interrupted; the instances keep starting under the supervisor (`llmctl down` stops them)")
        return EXIT_INTERRUPTED
    progress.close()
    instances = result["instances"]
    failed = [instance for instance in instances if instance["outcome"] == "failed"]
    pending = [instance["name"] for instance in instances if instance["outcome"] == "pending"]
    timed_out = bool(result.get("timed_out")) and wait
    ok = not failed and not timed_out
    if json_output:
        payload: dict[str, Any] = {"ok": ok, "timed_out": timed_out, "instances": instances}
        if actions is not None:
            payload["actions"] = actions
        render.write_json(statusdoc.with_version(payload))
    elif not wait and actions is not None:
        for name, action in actions.items():
            if name not in on_demand:  # said above, with what it means
                print(f"{name}: {action}")
    for instance in failed:
        explain_failure(instance)
    if timed_out:
        _stderr(f"llmctl: timed out after {timeout:g}s waiting for {', '.join(pending)} (they keep starting)")
    return 0 if ok else EXIT_FAILED


def explain_failure(instance: dict[str, Any]) -> None:
    from llmctl.logs.files import last_lines

    reason = instance.get("last_error") or instance.get("reason") or instance["state"]
    retry = " (retrying per its restart policy)" if instance["state"] == "backoff" else ""
    if sys.stderr.isatty():
        reason = render.visible(reason)  # it may quote what the server said
    _stderr(f"llmctl: {instance['name']} failed: {reason}{retry}")
    if instance.get("log"):
        lines = last_lines(Path(instance["log"]), FAILURE_LOG_LINES)
        if lines:
            _stderr(f"--- last {len(lines)} lines of {instance['log']} ---")
            write = render.line_writer(sys.stderr, raw=False)
            for line in lines:
                write("  " + line)


SLOW_START_S = 2.0  # a start quicker than this gets no phase lines, only its result


class _UpProgress:
    """One line per instance, updated in place on a terminal; one line as each settles otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.reported: set[str] = set()
        self.phases: dict[str, str] = {}
        self.enabled = enabled
        self.terminal = enabled and sys.stdout.isatty()
        self.live: Any = None

    def update(self, instances: list[dict[str, Any]]) -> None:
        if self.terminal and (self.live is not None or "pending" in statusdoc.outcomes(instances)):
            if self.live is None:  # Rich only once there is something to watch
                from rich.console import Console
                from rich.live import Live

                self.live = Live(console=Console(), transient=False, refresh_per_second=12)
                self.live.start()
            self.live.update(render.progress_table(instances))
            return
        for instance in instances:
            self._phase_line(instance)
            if instance["outcome"] != "pending" and instance["name"] not in self.reported:
                self.reported.add(instance["name"])
                word = render.shown_state(instance) if instance["outcome"] == "ok" else "failed"
                print(f"{instance['name']}: {word} {instance['url']}", flush=True)

    def _phase_line(self, instance: dict[str, Any]) -> None:
        """Off a terminal, a line on stderr as a slow start changes phase (stdout keeps the results)."""
        progress = instance.get("progress")
        if not self.enabled or not progress or progress["elapsed_s"] < SLOW_START_S:
            return
        if self.phases.get(instance["name"]) != progress["phase"]:
            self.phases[instance["name"]] = progress["phase"]
            sys.stderr.write(f"llmctl: {instance['name']}: {render.phase_text(progress)}\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def report_error(exc: LlmctlError, as_json: bool) -> None:
    """An error as one line on stderr, or under --json as a JSON document on stdout."""
    if as_json:
        render.write_json(statusdoc.error_document(exc.kind, str(exc), exc.exit_code))
    else:
        _stderr(f"llmctl: error: {exc}")
