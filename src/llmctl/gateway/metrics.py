"""The gateway's counters, per instance, as Prometheus text (the exposition format 0.0.4).

Request counts, latencies and tokens are the gateway's own (they start again with its process, as
Prometheus counters may); tokens and tokens/s come from the activity rows (llmctl.gateway.activity),
that is from the upstream's usage and timings. Starts, evictions and load times are the runners'
(llmctl.control.runner.Usage), as the supervisor last pushed them with the routes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmctl.planes import Route

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Tokens per second: a few on a large model on a CPU, thousands for a small prompt on a GPU.
RATE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0)


@dataclass
class Histogram:
    """Cumulative bucket counts over `bounds` (upper bounds, inclusive), their sum and their number."""

    bounds: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.total += value
        self.samples += 1
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1


def _rate_histogram() -> Histogram:
    return Histogram(RATE_BUCKETS)


@dataclass
class InstanceMetrics:
    requests: Counter[int] = field(default_factory=Counter)  # by HTTP status (499: the client went away)
    in_flight: int = 0
    queued: int = 0
    first_byte: Histogram = field(default_factory=Histogram)
    duration: Histogram = field(default_factory=Histogram)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: Histogram = field(default_factory=Histogram)
    prompt_rate: Histogram = field(default_factory=_rate_histogram)
    completion_rate: Histogram = field(default_factory=_rate_histogram)

    def observe_activity(self, row: Mapping[str, Any]) -> None:
        """Count an activity row (llmctl.gateway.activity.Activity's shape): its tokens, time to first token
        (ttft_ms) and tokens/s; a figure that is null (unknown) is left out, not counted as zero."""
        for attribute, key in (("prompt_tokens", "prompt_tokens"), ("completion_tokens", "completion_tokens")):
            value = row.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                setattr(self, attribute, getattr(self, attribute) + value)
        for histogram, key, scale in (
            (self.first_token, "ttft_ms", 1000.0),
            (self.prompt_rate, "prompt_tokens_per_s", 1.0),
            (self.completion_rate, "completion_tokens_per_s", 1.0),
        ):
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                histogram.observe(value / scale)


def prometheus(metrics: dict[str, InstanceMetrics], routes: Mapping[str, Route]) -> str:
    """The exposition text: `metrics` by instance name, lifecycle figures from `routes`."""

    def usage(name: str, key: str) -> object:
        route = routes.get(name)
        return route.usage.get(key) if route is not None else None

    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.extend([f"# HELP llmctl_gateway_{name} {help_text}", f"# TYPE llmctl_gateway_{name} {kind}"])

    family("requests_total", "counter", "Requests by instance and HTTP status (499: the client went away).")
    for name, m in metrics.items():
        for status, count in sorted(m.requests.items()):
            lines.append(f'llmctl_gateway_requests_total{{instance="{name}",status="{status}"}} {count}')
    gauges = (
        ("in_flight", "gauge", "Requests being served.", lambda m: m.in_flight),
        ("queued", "gauge", "Requests waiting for their instance to start.", lambda m: m.queued),
    )
    for metric, kind, help_text, value in gauges:
        family(metric, kind, help_text)
        for name, m in metrics.items():
            lines.append(f'llmctl_gateway_{metric}{{instance="{name}"}} {value(m)}')
    for metric, key, help_text in (
        ("starts_total", "starts", "Starts that requests caused."),
        ("evictions_total", "evictions", "Idle instances stopped to make room."),
    ):
        family(metric, "counter", help_text)
        for name in metrics:
            lines.append(f'llmctl_gateway_{metric}{{instance="{name}"}} {usage(name, key) or 0}')
    family("load_seconds", "gauge", "How long the last start on demand took until healthy.")
    for name in metrics:
        load = usage(name, "load_seconds")
        if isinstance(load, (int, float)):
            lines.append(f'llmctl_gateway_load_seconds{{instance="{name}"}} {load:.3f}')
    for metric, attribute, help_text in (
        ("prompt_tokens_total", "prompt_tokens", "Prompt tokens read, as the upstream counted them."),
        ("completion_tokens_total", "completion_tokens", "Tokens generated, as the upstream counted them."),
    ):
        family(metric, "counter", help_text)
        for name, m in metrics.items():
            lines.append(f'llmctl_gateway_{metric}{{instance="{name}"}} {getattr(m, attribute)}')
    for metric, attribute, help_text in (
        ("time_to_first_byte_seconds", "first_byte", "From the request to the first byte of the answer."),
        ("request_duration_seconds", "duration", "From the request to the end of the answer."),
        ("time_to_first_token_seconds", "first_token", "From the request to the first generated token (streams)."),
        ("prompt_tokens_per_second", "prompt_rate", "Prompt processing speed (the server's timings, else measured)."),
        ("completion_tokens_per_second", "completion_rate", "Generation speed (the server's timings, else measured)."),
    ):
        family(metric, "histogram", help_text)
        for name, m in metrics.items():
            histogram: Histogram = getattr(m, attribute)
            for bound, count in zip(histogram.bounds, histogram.counts, strict=True):
                lines.append(f'llmctl_gateway_{metric}_bucket{{instance="{name}",le="{bound}"}} {count}')
            lines.append(f'llmctl_gateway_{metric}_bucket{{instance="{name}",le="+Inf"}} {histogram.samples}')
            lines.append(f'llmctl_gateway_{metric}_sum{{instance="{name}"}} {histogram.total:.6f}')
            lines.append(f'llmctl_gateway_{metric}_count{{instance="{name}"}} {histogram.samples}')
    return "\n".join(lines) + "\n"
