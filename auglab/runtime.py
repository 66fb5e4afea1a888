"""Where and how the math runs, decided in one place: the device, the autocast precision, the
CPU's floating-point flags and threads, the processes of a torchrun launch, and labelled data
resident on the device.

Stages that compute on the device start with `setup(name)` (training with `processes(name)`,
as it may run under torchrun, then `set_cpu_flags`), and every module asks `autocast_dtype` for
its precision, so a CPU host, an AVX-512 bf16 host and a GPU differ only here. gan_sample alone
takes `choose_device` without the CPU flags: its float64 sampling has always run without them,
and its bytes must not move.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import hashlib
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from auglab import AuglabError

# --- device and precision ------------------------------------------------------------------------


def choose_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AuglabError("device 'cuda': no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(name)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). torch exposes the check only
    as a private function; this is the one place that calls it, and a torch without it counts
    as a CPU without bf16 (auto then trains in fp32, as on any such host)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check()) if check is not None else False


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32.

    `auto` picks bf16 where the hardware computes it natively (CUDA with bf16, CPUs with
    AVX512-BF16/AMX, 5x faster than fp32 here) and fp16 on older GPUs.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if native_bf16() else None


def eval_batch(device: torch.device) -> int:
    """Images per forward pass when scoring without gradients. On CPU 256: at 1024 a conv net's
    activations spill out of the caches and it scores 2-2.5x fewer images per second
    (`bench/eval_speed.py`); a GPU wants the large batch."""
    return 1024 if device.type == "cuda" else 256


def for_scoring(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode and NHWC memory layout (in place), the layout convolutions run 2-4x
    faster in on CPU (`bench/eval_speed.py`); feed it `as_scoring_input(x)`."""
    return model.eval().to(memory_format=torch.channels_last)


def as_scoring_input(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) batch in the layout `for_scoring` models take."""
    return x.contiguous(memory_format=torch.channels_last)


# mallopt's parameters (glibc's malloc.h) and the values keep_freed_memory sets
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEEP_FREED = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}


@functools.cache  # malloc's settings hold for the whole process: find and call libc once
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed buffers for reuse: by default one over 128 KiB (the
    threshold adapts up to 32 MiB) is mapped fresh and unmapped when freed, and the heap's free
    top goes back to the OS, so every scoring batch's activations were faulted in and zeroed page
    by page again (S1's cnn scored ~1.5x slower, bench/malloc_speed.py). Whether it applied:
    other C libraries (macOS, musl) keep their own policy."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in KEEP_FREED.items())


def set_cpu_flags(device: torch.device) -> None:
    """On CPU, flush denormal floats to zero: tiny activations otherwise slow CPU math up to 4x
    (bench/train_speed.py); and keep freed memory for reuse (`keep_freed_memory`). A no-op on
    CUDA, whose kernels flush already and whose memory torch's caching allocator keeps."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
        keep_freed_memory()


def setup(name: str) -> torch.device:
    """The device `name` asks for (see `choose_device`), with this process's CPU flags set for it:
    what a stage that computes on the device calls first."""
    device = choose_device(name)
    set_cpu_flags(device)
    return device


# --- processes: one, or one per device under torchrun ---------------------------------------------


@dataclass(frozen=True)
class Ranks:
    """This process among the training processes: `rank` of `world` (0 of 1 when alone)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()


def check_processes(device_name: str, nproc: int) -> None:
    """Refuse `nproc` processes that cannot each have a device of their own: on CUDA torchrun's rank r
    takes GPU r, so a rank past the last GPU would die with CUDA's "invalid device ordinal"."""
    if choose_device(device_name).type == "cuda" and nproc > (gpus := torch.cuda.device_count()):
        raise AuglabError(f"nproc {nproc} on device cuda: this machine has {gpus} GPU(s); "
                          "expected nproc <= the GPU count (one process per GPU)")


@contextlib.contextmanager
def processes(device_name: str) -> Iterator[torch.device]:
    """This process's device, for the block. Under torchrun (LOCAL_RANK set) the process also
    joins the process group: NCCL with one GPU per local rank on CUDA; gloo on CPU, with the
    node's cores shared out between its ranks (each would otherwise use all of them)."""
    device = choose_device(device_name)
    if "LOCAL_RANK" not in os.environ:
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


# --- data on the device -----------------------------------------------------------------------------


@dataclass
class DeviceData:
    """A labelled set on the device: images (N, 1, H, W) uint8, labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_numpy(cls, images: np.ndarray, labels: np.ndarray, device: torch.device) -> DeviceData:
        host_images = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
        host_labels = torch.from_numpy(labels.astype(np.int64))
        if device.type == "cuda":  # pinned pages let the one copy to the GPU run asynchronously
            host_images, host_labels = host_images.pin_memory(), host_labels.pin_memory()
        return cls(host_images.to(device, non_blocking=True), host_labels.to(device, non_blocking=True))

    def __len__(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """sha256 of the pixels and labels: identifies the data a checkpoint was trained on."""
        h = hashlib.sha256(self.images.cpu().numpy().tobytes())
        h.update(self.labels.cpu().numpy().tobytes())
        return h.hexdigest()
