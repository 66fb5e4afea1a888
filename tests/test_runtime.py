"""Where the math runs: the CPU flags, the host-side view choice, and the CUDA path, which must
not wait for the GPU inside the training step (run where CUDA exists, reported skipped elsewhere)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import toy
from conftest import ROOT
from test_distributed import ENV
from test_train import STATS, experiment, toy_data

from auglab import checkpoint, models, params, runtime, train

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this host)")
VIEWS = {"a": {"rotation": 15.0, "shear": 5.0, "hflip": 0.5}, "b": {"zoom": 0.2, "erasing": {"p": 0.7, "area": [0.05, 0.2]}},
         "c": {"elastic": {"alpha": 3.0, "sigma": 1.0}, "noise": 4.0, "translation": 0.1}}


def test_cpu_flags_flush_denormals_on_cpu_only():
    before = torch.tensor([1e-40], dtype=torch.float32) * 1.0
    assert before.item() != 0.0  # a denormal survives by default
    try:
        assert runtime.setup("cpu") == torch.device("cpu")
        assert (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() == 0.0
    finally:
        torch.set_flush_denormal(False)
    assert isinstance(runtime.native_bf16(), bool)


def test_views_are_picked_by_the_augmentation_generator_on_cpu_and_on_the_host_elsewhere():
    cpu = torch.Generator().manual_seed(1)
    assert train.view_generator(cpu, 0) is cpu  # the draws (and weights) of every earlier version
    if torch.cuda.is_available():
        picked = train.view_generator(torch.Generator(device="cuda").manual_seed(1), 0)
        assert picked.device.type == "cpu"


@CUDA
def test_an_augmented_epoch_on_cuda_never_waits_for_the_gpu():
    """run_epoch with every on-the-fly op: no .item(), no boolean mask, no copy to the host per
    step (torch raises on any synchronizing call in "error" sync-debug mode)."""
    device = torch.device("cuda")
    exp = experiment(device="cuda", precision="bf16", augment=VIEWS, batch_size=32)
    data = toy_data(256)
    data = runtime.DeviceData(data.images.to(device), data.labels.to(device))
    model = models.build(exp.model, exp.model_kwargs).to(device)
    net = train.Objective(model, exp)
    optimizer = train.make_optimizer(model.parameters(), exp.optimizer)
    inputs = train.Inputs(STATS["mean"], STATS["std"], model.image_size, exp.channels_last)
    augment_rng = torch.Generator(device=device).manual_seed(1)
    view_rng = train.view_generator(augment_rng, exp.seed)
    views = [view.ops() for view in exp.augment.values()]
    order = torch.randperm(len(data), device=device)

    def epoch():
        return train.run_epoch(net, optimizer, None, data, order, exp, views, augment_rng, inputs, torch.bfloat16,
                               "test", view_rng=view_rng)

    epoch()  # warm-up: lazy library initialization may synchronize once
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_sum, correct, images = epoch()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert images.item() == len(data) and torch.isfinite(loss_sum).item() and 0 <= correct.item() <= len(data)


@CUDA
@pytest.mark.slow  # a stage script as a subprocess
def test_train_stage_with_device_cuda_end_to_end(tmp_path):
    """`device: cuda` through the train stage: the model trains on the GPU with on-the-fly
    augmentation and is written from the CPU copy of its weights."""
    root = toy.project(tmp_path)
    data = params.read_yaml(root / "params.yaml")
    data["train"]["experiments"]["toy_cuda"] = {
        "dataset": "toy", "shards": "split/toy", "train": ["train"], "model": "cnn", "device": "cuda", "epochs": 2,
        "batch_size": 32, "augment": VIEWS, "model_kwargs": {"blocks": [[8]], "dense": [16], "batchnorm": True}}
    toy.write_params(root, data)
    command = [sys.executable, str(ROOT / "stages/train.py"), "--experiment", "toy_cuda", "--splits", "data/split/toy",
               "--shards", "data/split/toy", "--stats", "data/preprocessed/toy.json",
               "--checkpoint", "artifacts/checkpoints/toy_cuda.pt", "--out", "artifacts/models/toy_cuda",
               "--eval", "artifacts/eval/toy_cuda", "--metrics", "artifacts/metrics/toy_cuda.json",
               "--confusion", "artifacts/confusion/toy_cuda.csv"]
    done = subprocess.run(command, check=False, cwd=root, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cuda" in done.stderr and done.stderr.count("epoch 2/2: train loss") == 1
    _, state = checkpoint.load_model(root / "artifacts/models/toy_cuda/model.pt", torch.device("cpu"))
    assert all(tensor.device.type == "cpu" for tensor in state["state_dict"].values())
    assert not (root / "artifacts/checkpoints/toy_cuda.pt").exists()  # finished: removed
    assert json.loads((root / "artifacts/metrics/toy_cuda.json").read_text())["split"] == "test"  # then scored


def test_test_workers_share_the_cores():
    """`make test` runs pytest-xdist workers; tests/conftest.py gives each, and every process it
    starts (stages, torchrun), its share of the cores as OpenMP threads, set before torch starts."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers < 2:
        pytest.skip("one pytest process (make test WORKERS=0): torch keeps its default threads")
    share = int(os.environ["OMP_NUM_THREADS"])  # the worker's share, or the caller's own setting
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                           capture_output=True, text=True, check=True)
    assert share >= 1 and torch.get_num_threads() == share and int(child.stdout) == share


MMAPPED_16_MIB = """
import ctypes, sys
from auglab import runtime
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.mallinfo2.restype = ctypes.c_void_p, Info
if sys.argv[1] == "setup":
    runtime.setup("cpu")
before = libc.mallinfo2().hblkhd
buffer = libc.malloc(16 << 20)
print(libc.mallinfo2().hblkhd - before >= 16 << 20)
libc.free(ctypes.c_void_p(buffer))
"""


@pytest.mark.slow  # fresh interpreters: mallopt settles a process's malloc for good
def test_cpu_setup_serves_a_16_mib_buffer_from_the_heap_that_keeps_it():
    """glibc maps a 16 MiB buffer of its own and unmaps it when freed (the page faults that made
    scoring ~1.5x slower, bench/malloc_speed.py); after runtime.setup on CPU it comes from the
    heap, which keeps it when freed."""
    mapped = {way: subprocess.run([sys.executable, "-c", MMAPPED_16_MIB, way], cwd=ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip() for way in ("default", "setup")}
    assert mapped == {"default": "True", "setup": "False"}
