"""The bare limit: the same generations in plain warm diffusers processes, no queue.

`BarePool` starts `procs` child processes (`python -m bench.bare --child ...`), each with `threads`
torch threads, that load the built-in model once with plain `from_pretrained`. `pool.run(n, params)`
first has every child make one untimed warm-up image with `params`, then sends all of them `go`:
each makes its share of the items (item i with seed `seed + i` and the i-th prompt, as the queue
makes it) and reports its per-image times. Wall time runs from the `go` to the last child's last
image. Between runs the children idle on stdin.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import prompts


class BarePool:
    """`procs` warm diffusers processes with `threads` torch threads each."""

    def __init__(self, procs: int, threads: int, device: str, models_dir: Path) -> None:
        self.procs, self.threads = procs, threads
        spec = json.dumps({"threads": threads, "device": device, "models_dir": str(models_dir)})
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
        self.children = [subprocess.Popen([sys.executable, "-m", "bench.bare", "--child", spec], env=env,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                         for _ in range(procs)]
        self.device = [self._read(c) for c in self.children][0]["device"]

    def _read(self, child: subprocess.Popen) -> dict[str, Any]:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"bare child exited with code {child.wait()}")
        return json.loads(line)

    def _send_all(self, msg: dict[str, Any]) -> None:
        for child in self.children:
            child.stdin.write(json.dumps(msg) + "\n")
            child.stdin.flush()

    def warm(self, params: dict[str, Any], seed: int) -> None:
        """Have every process make one untimed image with `params` (first-call costs)."""
        self._send_all({"warm": params, "seed": seed, "n": 1})
        for child in self.children:
            self._read(child)

    def run(self, n: int, params: dict[str, Any], seed: int, warm: bool = True) -> dict[str, Any]:
        """Make `n` images split evenly over the processes (after a warm-up image each, unless
        `warm` is False); wall time and per-image generate times."""
        if warm:
            self.warm(params, seed)
        shares = [list(range(i, n, self.procs)) for i in range(self.procs)]
        t0 = time.time()
        for child, share in zip(self.children, shares):
            child.stdin.write(json.dumps({"run": params, "seed": seed, "n": n, "indices": share}) + "\n")
            child.stdin.flush()
        reports = [self._read(child) for child in self.children]
        return {"wall_s": max(r["t_end"] for r in reports) - t0,
                "generate_s": [g for r in reports for g in r["generate_s"]],
                "procs": self.procs, "threads": self.threads, "device": self.device}

    def close(self) -> None:
        """Stop the children."""
        for child in self.children:
            if child.poll() is None:
                child.stdin.close()
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()

    def __enter__(self) -> "BarePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child(spec: dict[str, Any]) -> None:
    import torch

    import diffusers
    from workers.builtins.registry import ensure_builtin
    from workers.loading.device import select_device

    # 1. Device and model, picked as a worker picks them, loaded once with plain diffusers.
    torch.set_num_threads(spec["threads"])
    diffusers.utils.logging.disable_progress_bar()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    device = select_device(spec["device"])
    path = ensure_builtin(Path(spec["models_dir"]), "tiny-sd")
    pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=device.torch_dtype).to(device.device)
    pipe.set_progress_bar_config(disable=True)
    print(json.dumps({"device": f"{device.device} ({device.name}, {device.dtype})"}), flush=True)

    def make(p: dict[str, Any], texts: list[str], seeds: list[int]) -> None:
        with torch.inference_mode():
            pipe(prompt=texts, negative_prompt=[""] * len(texts), num_inference_steps=p["steps"],
                 guidance_scale=p.get("guidance_scale", 7.5), height=p["height"], width=p["width"],
                 generator=[torch.Generator(device="cpu").manual_seed(s) for s in seeds])
        if device.device.startswith("cuda"):
            torch.cuda.synchronize()

    # 2. Commands: warm up with some parameters, or make a share of the items.
    for line in sys.stdin:
        msg = json.loads(line)
        texts = prompts(msg["n"])
        if "warm" in msg:
            batch = int(msg["warm"].get("batch", 1))
            make(msg["warm"], ["warm-up"] * batch, [msg["seed"] + i for i in range(batch)])
            print(json.dumps({"ok": True}), flush=True)
            continue
        # `batch` images per call (default 1), as a worker's `--max-batch`; the time of a call is
        # shared by its images.
        times, indices, batch = [], msg["indices"], int(msg["run"].get("batch", 1))
        for start in range(0, len(indices), batch):
            group = indices[start:start + batch]
            t = time.perf_counter()
            make(msg["run"], [texts[i] for i in group], [msg["seed"] + i for i in group])
            times += [(time.perf_counter() - t) / len(group)] * len(group)
        print(json.dumps({"generate_s": times, "t_end": time.time()}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.bare --child SPEC (started by the benchmarks)")
