"""What a new supervisor takes over from the one before it (which may have been killed with -9).

Servers still running (same PID *and* create time) are adopted; instances it meant to run that have no
process (waiting in backoff when it died) are started again; the gateway is served again, with every
instance of the config known. A PID whose create time differs is never touched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from llmctl.control import state
from llmctl.control.runner import Adoption, Runner
from llmctl.control.runners import new_runner
from llmctl.control.states import State
from llmctl.errors import LlmctlError
from llmctl.spec import Config, GatewaySpec, InstanceSpec
from llmctl.system.process import ProcessHandle

if TYPE_CHECKING:
    from llmctl.control.supervisor import Supervisor

log = logging.getLogger("llmctl.control.supervisor")


async def adopt_recorded(supervisor: Supervisor) -> None:
    state.remove_stale_temps(supervisor.paths.state_file)
    saved, warning = state.load(supervisor.paths.state_file)
    if warning:
        log.warning(warning)
        supervisor.warnings.append(warning)
    supervisor.learn_settings(saved.config or {})
    supervisor.adopting = True
    resume: list[Runner] = []
    try:
        for record in saved.records:
            runner = _runner_from(supervisor, record)
            if runner is not None:
                supervisor.runners[runner.name] = runner
                if runner.state is State.STOPPED:
                    resume.append(runner)
    finally:
        supervisor.adopting = False
    supervisor.save()
    for runner in resume:
        await runner.request("start", "resuming: the previous supervisor meant it to run")
    supervisor.gateways.adopt(saved.gateway)  # before the config: the gateway keeps its socket open
    await _resume_gateway(supervisor, saved.config)
    # So the first `status` already shows adopted servers healthy.
    await supervisor.wait([runner.name for runner in supervisor.runners.values()], timeout=2.0)


def _runner_from(supervisor: Supervisor, record: state.InstanceRecord) -> Runner | None:
    try:
        spec = InstanceSpec.from_dict(record.spec)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("state for %s is unreadable (%s); not adopting pid %s", record.name, exc, record.pid)
        return None
    if not record.pid:  # it was waiting to start again (backoff) when the supervisor died
        return new_runner(spec, supervisor.services) if record.wanted else None
    handle = ProcessHandle(record.pid, record.create_time)
    if not handle.is_alive():
        log.info("%s: recorded pid %s is gone; not adopting", record.name, record.pid)
        return None
    adoption = Adoption(handle, record.pgid or record.pid, record.started_at, record.restarts)
    return new_runner(spec, supervisor.services, adoption)


async def _resume_gateway(supervisor: Supervisor, saved: dict[str, Any] | None) -> None:
    try:
        config = Config.from_dict(saved) if saved and saved.get("instances") is not None else None
    except (KeyError, TypeError, ValueError):
        config = None
    if config is None or config.gateway is None:
        await supervisor.set_gateway(None)  # a gateway left running for a config that has none: stop it
        return
    supervisor.config = config
    for spec in config.instances:
        supervisor.runner_for(spec)
    # In the background: a gateway it starts subscribes over the control socket, which is served only
    # once adoption is over.
    supervisor.gateway_resume = asyncio.ensure_future(_serve_gateway(supervisor, config.gateway))


async def _serve_gateway(supervisor: Supervisor, spec: GatewaySpec) -> None:
    try:
        await supervisor.set_gateway(spec)
        supervisor.gateways.publish_all()
    except LlmctlError as exc:
        log.error("cannot serve the gateway again: %s", exc)
        supervisor.warnings.append(f"the gateway is not running: {exc}")
