"""Which runner an instance gets, and how the status document shows one."""

from __future__ import annotations

from typing import Any

from llmctl.control.external import ExternalRunner
from llmctl.control.instancestatus import describe
from llmctl.control.runner import Adoption, Runner, Services
from llmctl.spec import InstanceSpec


def new_runner(spec: InstanceSpec, services: Services, adoption: Adoption | None = None) -> Runner:
    """The runner for `spec`: one that attaches for an external server, one that owns the process otherwise."""
    if spec.external:
        return ExternalRunner(spec, services)
    return Runner(spec, services, adoption)


def describe_runner(runner: Runner) -> dict[str, Any]:
    """This instance as the status document shows it."""
    return describe(runner.spec, runner, str(runner.services.paths.log_file(runner.name)))
