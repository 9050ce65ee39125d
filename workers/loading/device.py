"""Device and dtype selection: what this worker process runs on."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sdq.contract import worker_kind
from sdq.memory import OFFLOAD_SETTINGS
from sdq.exceptions import CapabilityError
from workers.loading.cpu_paths import CPU_PATHS, CpuPath, cpu_model, resolve_cpu_path

TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

BF16_MIN_CAPABILITY = (8, 0)
"""CUDA compute capability with native bfloat16 (Ampere); older GPUs (T4, V100) only emulate it, slowly."""


def bf16_native(capability: tuple[int, int]) -> bool:
    """True when a GPU of this compute capability computes bfloat16 natively."""
    return tuple(capability) >= BF16_MIN_CAPABILITY


@dataclass(frozen=True)
class Device:
    """The device a worker is bound to and the dtype it computes in."""

    device: str
    dtype: str
    name: str
    cpu_path: CpuPath | None = None  # a CPU worker's path (`workers.loading.cpu_paths`); None on a GPU
    simulated_gb: float | None = None  # testing aid `--debug-memory-gb`: the device memory it reports

    @property
    def backend(self) -> str:
        """How the models run: `eager`, or a CPU worker's `channels_last` / `compile`."""
        return self.cpu_path.backend if self.cpu_path is not None else "eager"

    @property
    def kind(self) -> str:
        """`cpu` or `gpu` (`contract.worker_kind`)."""
        return worker_kind(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype."""
        return TORCH_DTYPES[self.dtype]

    def memory_gb(self) -> tuple[float | None, float | None]:
        """(total, free) memory of the device in GiB (both the simulated size under `--debug-memory-gb`)."""
        if self.simulated_gb is not None:
            return self.simulated_gb, self.simulated_gb
        if self.device.startswith("cuda"):
            free, total = torch.cuda.mem_get_info(torch.device(self.device))
            return round(total / 2**30, 2), round(free / 2**30, 2)
        import psutil

        vm = psutil.virtual_memory()
        return round(vm.total / 2**30, 2), round(vm.available / 2**30, 2)


def peak_rss_gb() -> float | None:
    """This process's peak resident memory so far in GiB (what the models it ran really needed in host
    RAM: weights, activations, allocator slack); None where the platform does not report it."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # Linux: KiB


def select_device(device: str = "auto", dtype: str = "auto", force: bool = False, cpu_path: str = "eager",
                  cpuinfo: str | None = None) -> Device:
    """Resolve `--device`/`--dtype`/`--cpu-path`; refuse combinations that cannot run well. On a CPU,
    `cpuinfo` (text; default /proc/cpuinfo) decides whether bf16 is native (`workers.loading.cpu_paths`)."""
    if cpu_path not in CPU_PATHS:
        raise CapabilityError(f"--cpu-path {cpu_path!r}: expected one of {', '.join(CPU_PATHS)}")
    # 1. Device.
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CapabilityError(f"--device {device}: no CUDA device is visible to torch "
                                  f"(torch {torch.__version__}); install a CUDA build of torch or use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise CapabilityError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        device = f"cuda:{index}"
        # Bind the process to its device: without this, code that uses "the current device"
        # (allocator, streams, `is_bf16_supported`, offload hooks) works on GPU 0.
        torch.cuda.set_device(index)
        name = torch.cuda.get_device_name(index)
    elif device == "cpu":
        name = cpu_model(cpuinfo)
    else:
        raise CapabilityError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    # 2. Dtype.
    requested = dtype
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else "fp16"
    if dtype not in TORCH_DTYPES:
        raise CapabilityError(f"--dtype {dtype!r}: expected auto, fp16, bf16 or fp32")
    if device == "cpu" and dtype == "fp16" and not force:
        raise CapabilityError("--dtype fp16 on --device cpu: half precision is a GPU format and is slow or "
                              "fails on CPUs; use --dtype fp32 (or bf16), or pass --force-dtype")
    if dtype == "bf16" and device.startswith("cuda"):
        capability = torch.cuda.get_device_capability(device)
        if not bf16_native(capability):
            raise CapabilityError(f"--dtype bf16: {name} ({device}, compute capability "
                                  f"{capability[0]}.{capability[1]}) has no native bfloat16 (needs "
                                  f"{BF16_MIN_CAPABILITY[0]}.{BF16_MIN_CAPABILITY[1]} or newer); use --dtype fp16")
    if device != "cpu":
        if cpu_path != "eager":
            raise CapabilityError(f"--cpu-path {cpu_path}: CPU paths apply to --device cpu only, not {device}")
        return Device(device=device, dtype=dtype, name=name)
    # 3. A CPU's path: bf16 only where native, the backend asked for or measured (`workers.loading.cpu_paths`).
    if dtype == "fp16":
        backend = "eager" if cpu_path == "fastest" else cpu_path
        return Device(device=device, dtype=dtype, name=name, cpu_path=CpuPath("fp16", backend, "--dtype fp16 --force-dtype"))
    path = resolve_cpu_path(requested, cpu_path, force, cpuinfo)
    return Device(device=device, dtype=path.dtype, name=name, cpu_path=path)


def resolve_offload(offload: str, device: Device) -> str:
    """`--offload` for this device: offloading moves weights between host RAM and a GPU, so a CPU worker
    never offloads (`auto` means `never` there, and `model`/`group` are refused), except under the testing
    aid `--debug-memory-gb`, which makes it a small device whose offload hooks point at the CPU."""
    if offload not in OFFLOAD_SETTINGS:
        raise CapabilityError(f"--offload {offload!r}: expected one of {', '.join(OFFLOAD_SETTINGS)}")
    if device.kind == "gpu" or device.simulated_gb is not None or offload == "never":
        return offload
    if offload == "auto":
        return "never"
    raise CapabilityError(f"--offload {offload}: offloading saves GPU memory; a CPU worker's weights are in its "
                          "RAM already (use --offload never or auto)")


def set_threads(threads: int | None) -> None:
    """Use `threads` CPU threads for torch's intra-op work (None: torch's default)."""
    if threads:
        torch.set_num_threads(threads)
