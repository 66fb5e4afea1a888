"""Train one experiment: data resident on the device as uint8, batches by indexing a seeded
permutation, augmentation and normalization on the batch, autocast, resumable checkpoints.

The loop is the whole story (airbench-style): no Dataset, no DataLoader. Each epoch draws one
permutation from a torch.Generator, gathers uint8 rows by index, optionally augments them on the
device with auglab.augment's batched ops, turns them into normalized float input (padding for
LeNet-5), and steps. A checkpoint holding everything the next epoch depends on (weights,
optimizer, scheduler, every random state, history, best weights) is written atomically after each
epoch, so a killed run resumes and ends with the same weights as an uninterrupted one on CPU.

Under torchrun (experiment `nproc` > 1, or a multi-node launch) every rank draws the same global
batch of `batch_size` rows, augments it with the same generator, and trains on its share (rows
rank, rank + world, ...); DistributedDataParallel all-reduces gradients scaled so that they equal
the single process's. BatchNorm: SyncBatchNorm on CUDA (batch statistics over the global batch);
gloo has no SyncBatchNorm, so on CPU each rank normalizes its share with its own statistics and
the running buffers are broadcast from rank 0 (DDP before every forward, and after every epoch).
Rank 0 alone writes checkpoints; every rank can resume from them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from auglab import AuglabError, augment, models, preprocess
from auglab.files import write_bytes_atomic
from auglab.params import Experiment

EVAL_BATCH = 1024


# --- device and precision: decided here, once ---------------------------------------------------


def choose_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; `cuda` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AuglabError("device 'cuda': no CUDA device here; use 'auto' or 'cpu'")
    return torch.device(name)


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
    return torch.bfloat16 if torch.cpu._is_avx512_bf16_supported() else None


# --- processes: one, or one per device under torchrun ------------------------------------------


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


# --- data ------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Inputs:
    """How uint8 batches become model input: normalization statistics and the model's side."""

    mean: float
    std: float
    size: int
    channels_last: bool

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = preprocess.to_input(batch, self.mean, self.std, self.size)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


# --- optimizer, schedule, penalty, objective -------------------------------------------------


def make_optimizer(parameters, config) -> torch.optim.Optimizer:
    """An optimizer from params (`experiment.optimizer`)."""
    name, lr, decay = config.name, config.lr, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(parameters, lr, momentum=config.momentum, nesterov=config.nesterov,
                               weight_decay=decay)
    if config.nesterov:
        raise AuglabError(f"optimizer {name}: nesterov applies to sgd only (nadam is Adam's)")
    if name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr, momentum=config.momentum, weight_decay=decay)
    if config.momentum:
        raise AuglabError(f"optimizer {name}: momentum applies to sgd and rmsprop only")
    kinds = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "adadelta": torch.optim.Adadelta,
             "adamax": torch.optim.Adamax, "nadam": torch.optim.NAdam}
    return kinds[name](parameters, lr, weight_decay=decay)


def make_schedule(optimizer: torch.optim.Optimizer, config, epochs: int, steps: int):
    """(scheduler or None, 'step' | 'epoch' | 'val'): when the trainer calls scheduler.step()."""
    name = config.name
    if name == "constant":
        return None, "epoch"
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, config.step_epochs, config.gamma), "epoch"
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps), "step"
    if name == "onecycle":
        lr = optimizer.param_groups[0]["lr"]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps,
                                                   pct_start=config.warmup), "step"
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.gamma,
                                                      patience=config.patience), "val"


def penalty(model: nn.Module, l1: float, l2: float) -> torch.Tensor | float:
    """Keras-style kernel regularizers: l1*sum|w| + l2*sum w^2 over conv and dense weights."""
    if not (l1 or l2):
        return 0.0
    weights = [p for p in model.parameters() if p.dim() > 1]
    total = 0.0
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in weights)
    if l2:
        total = total + l2 * sum(w.square().sum() for w in weights)
    return total


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float):
    """(loss, scores): the model's own objective when it has one (CapsNet), else cross-entropy."""
    if hasattr(model, "objective"):
        return model.objective(x, y)
    scores = model(x)
    return F.cross_entropy(scores.float(), y, label_smoothing=smoothing), scores


class Objective(nn.Module):
    """The training objective as one module, (x, y) -> (mean loss, weight penalty, scores), so
    that DistributedDataParallel wraps all of it: a CapsNet's own objective and the penalty too."""

    def __init__(self, model: nn.Module, experiment: Experiment):
        super().__init__()
        self.model = model
        self.smoothing, self.l1, self.l2 = experiment.label_smoothing, experiment.l1, experiment.l2

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        loss, scores = objective(self.model, x, y, self.smoothing)
        return loss, penalty(self.model, self.l1, self.l2), scores


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, inputs: Inputs, dtype: torch.dtype | None) -> tuple[float, float]:
    """(mean loss, accuracy) of a model on a set, in eval mode, without augmentation."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    device_type = data.images.device.type
    for start in range(0, len(data), EVAL_BATCH):
        x = inputs(data.images[start : start + EVAL_BATCH])
        y = data.labels[start : start + EVAL_BATCH]
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            loss, scores = objective(model, x, y, 0.0)
        loss_sum += loss.item() * len(y)
        correct += (scores.argmax(1) == y).sum().item()
    model.train(was_training)
    return loss_sum / len(data), correct / len(data)


def evaluate_shared(model: nn.Module, data: DeviceData, inputs: Inputs, dtype: torch.dtype | None,
                    ranks: Ranks) -> tuple[float, float]:
    """evaluate() with the set shared out between the ranks (rows rank, rank + world, ...) and the
    sums all-reduced, so every rank gets the same numbers (and takes the same early stop)."""
    if ranks.world == 1:
        return evaluate(model, data, inputs, dtype)
    share = DeviceData(data.images[ranks.rank :: ranks.world], data.labels[ranks.rank :: ranks.world])
    loss, accuracy = evaluate(model, share, inputs, dtype) if len(share) else (0.0, 0.0)
    sums = torch.tensor([loss * len(share), accuracy * len(share)], dtype=torch.float64, device=data.images.device)
    dist.all_reduce(sums)
    return sums[0].item() / len(data), round(sums[1].item()) / len(data)


# --- checkpoints -----------------------------------------------------------------------------


def fingerprint(experiment: Experiment, train: DeviceData, val: DeviceData, init: dict | None) -> str:
    """What a checkpoint must match to be resumed: the params, the data and the initial weights.
    nproc 1 is left out, so checkpoints from before the key existed still resume."""
    dumped = experiment.model_dump(mode="json", exclude={"nproc"} if experiment.nproc == 1 else None)
    digest = hashlib.sha256(json.dumps(dumped, sort_keys=True).encode())
    digest.update(f"{train.digest()} {val.digest()}".encode())
    for name, tensor in sorted((init or {}).get("state_dict", {}).items()):
        digest.update(name.encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save into memory, then an atomic write: a kill never leaves a torn file, and the
    bytes do not depend on a temp file's name (torch.save names its archive after the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def _rng_states(shuffle: torch.Generator, augment_rng: torch.Generator) -> dict:
    states = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "augment": augment_rng.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng(states: dict, shuffle: torch.Generator, augment_rng: torch.Generator) -> None:
    torch.set_rng_state(states["torch"])
    shuffle.set_state(states["shuffle"])
    augment_rng.set_state(states["augment"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# What torch.load raises for a file cut short or not written by torch.save: RuntimeError (zip
# without its central directory), OSError EINVAL (zip cut inside a record, the common case),
# EOFError (empty), UnpicklingError (not a torch file at all).
UNREADABLE = (RuntimeError, OSError, EOFError, pickle.UnpicklingError)


def first_line(error: BaseException) -> str:
    """An exception's message up to its first line break (torch's run on for paragraphs)."""
    return str(error).split("\n", 1)[0].split(". ", 1)[0]


def load_resumable(path: Path, expected: str, log: Callable[[str], None], ranks: Ranks = Ranks()) -> dict | None:
    """The checkpoint at `path` if it was written for the same params and data, else None. With
    several ranks, rank 0 reads it and sends it to the others (nodes need not share a disk)."""
    if ranks.world > 1:
        sent = [_load_resumable(path, expected, log) if ranks.rank == 0 else None]
        dist.broadcast_object_list(sent, src=0)
        return sent[0]
    return _load_resumable(path, expected, log)


def _load_resumable(path: Path, expected: str, log: Callable[[str], None]) -> dict | None:
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as e:  # torn or foreign: not resumed, and the log says why
        log(f"not resuming: {path} is unreadable, truncated or not a checkpoint "
            f"({type(e).__name__}: {first_line(e)}); training from scratch")
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != expected:
        log(f"not resuming: {path} was written for different params or data; training from scratch")
        return None
    return state


# --- the loop --------------------------------------------------------------------------------


def run_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, step_scheduler, data: DeviceData,
              order: torch.Tensor, experiment: Experiment, views: list[dict], augment_rng: torch.Generator,
              inputs: Inputs, dtype: torch.dtype | None, desc: str, ranks: Ranks = Ranks(),
              scaler: torch.amp.GradScaler | None = None) -> tuple[float, float, int]:
    """One pass over `data` in `order` (a permutation); returns (mean train loss, accuracy, images
    trained on, summed over ranks). `net` is an Objective, in DistributedDataParallel when several
    ranks share the epoch: each trains on its rows of every global batch of experiment.batch_size.
    `scaler` scales fp16 losses (see `gradient_scaler`); disabled, it is a plain backward and step."""
    scaler = scaler or gradient_scaler(data.images.device, dtype)
    net.train()
    device, size = data.images.device, experiment.batch_size
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    correct = torch.zeros((), device=device, dtype=torch.int64)
    images = torch.zeros((), device=device, dtype=torch.int64)
    started = time.perf_counter()
    bar = tqdm(range(math.ceil(len(data) / size)), desc=desc, unit="step", file=sys.stderr, leave=False,
               mininterval=1.0, disable=None if ranks.rank == 0 else True)  # None: a bar on a TTY only
    for step in bar:
        rows = order[step * size : (step + 1) * size]
        batch, y = data.images[rows], data.labels[rows]  # (B, 1, H, W) uint8, (B,) int64
        if views:  # on the fly: every image gets one view, drawn at random
            which = torch.randint(len(views), (len(rows),), generator=augment_rng, device=device)
            for v, ops in enumerate(views):
                chosen = which == v
                batch[chosen] = augment.apply_view(batch[chosen], ops, augment_rng)
        share = 1.0  # of the global batch's mean loss this rank's gradient carries, times world
        if ranks.world > 1:  # every rank augmented the whole batch (one shared generator): take its rows
            batch, y = batch[ranks.rank :: ranks.world], y[ranks.rank :: ranks.world]
            share = len(y) * ranks.world / len(rows)  # 1 unless the last batch splits unevenly
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            fit, regularizer, scores = net(inputs(batch), y)
            loss = fit + regularizer
        optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks: mean loss x share makes that average the global batch's
        scaler.scale(loss if share == 1.0 else fit * share + regularizer).backward()
        scaler.step(optimizer)  # skips the step when fp16 gradients overflowed, then lowers the scale
        scaler.update()
        if step_scheduler is not None:
            step_scheduler.step()
        loss_sum += loss.detach() * len(y)
        correct += (scores.detach().argmax(1) == y).sum()
        images += len(y)
        if step % 50 == 0:
            seen = min((step + 1) * size, len(data))
            bar.set_postfix(loss=f"{loss_sum.item() * ranks.world / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):,.0f}", refresh=False)
    if ranks.world > 1:
        for total in (loss_sum, correct, images):
            dist.all_reduce(total)
    return loss_sum.item() / len(data), correct.item() / len(data), images.item()



def gradient_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler for fp16 autocast, whose small gradients underflow to zero without it
    (bf16 has fp32's range and needs none): enabled for fp16 only, a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


@dataclass
class Result:
    """What training produced: the final model, per-epoch history, and the best epoch."""

    model: nn.Module
    history: list[dict]
    best_epoch: int
    stopped_early: bool


def train(
    experiment: Experiment,
    train_data: DeviceData,
    val_data: DeviceData,
    stats: dict,
    checkpoint: Path,
    on_epoch: Callable[[dict], None] = lambda row: None,
    log: Callable[[str], None] = print,
    init_state: dict | None = None,
    stop_after: int | None = None,
) -> Result:
    """Train `experiment` on device-resident data; resume from `checkpoint` when it matches.

    `on_epoch` receives each epoch's metrics row (also replayed for resumed epochs, so a logger
    sees the whole history). `init_state` is a pretrained model checkpoint for transfer learning.
    `stop_after` ends the run after that many epochs of this call (tests use it to interrupt).
    Inside a process group (torchrun) the ranks share every batch; rank 0 alone saves checkpoints.
    """
    device = train_data.images.device
    ranks = Ranks.current()
    tail = len(train_data) % experiment.batch_size
    if ranks.world > 1 and (experiment.batch_size < ranks.world or 0 < tail < ranks.world):
        raise AuglabError(f"batch_size {experiment.batch_size} on {len(train_data):,} images leaves a batch of "
                          f"{tail if experiment.batch_size >= ranks.world else experiment.batch_size} images for "
                          f"{ranks.world} processes; expected at least one image per process in every batch")
    dtype = autocast_dtype(device, experiment.precision)
    torch.manual_seed(experiment.seed)  # dropout and init draw from the global generator
    model = models.build(experiment.model, experiment.model_kwargs).to(device)
    if init_state is not None:
        transfer(model, init_state, experiment.freeze, log)
    if experiment.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if ranks.world > 1 and device.type == "cuda":  # batch statistics over the global batch (no gloo support)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    inputs = Inputs(stats["mean"], stats["std"], model.image_size, experiment.channels_last)
    steps = math.ceil(len(train_data) / experiment.batch_size)  # per epoch
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, experiment.optimizer)
    scheduler, schedule_every = make_schedule(optimizer, experiment.schedule, experiment.epochs, steps)
    shuffle = torch.Generator(device=device).manual_seed(experiment.seed)
    augment_rng = torch.Generator(device=device).manual_seed(experiment.seed + 1)
    views = [view.ops() for view in experiment.augment.values()]
    expected = fingerprint(experiment, train_data, val_data, init_state)

    history: list[dict] = []
    best = {"epoch": 0, "val_loss": math.inf, "state": None}
    start_epoch = 0
    state = load_resumable(checkpoint, expected, log, ranks)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], shuffle, augment_rng)
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        log(f"resuming from {checkpoint} after epoch {start_epoch}")
        for row in history:
            on_epoch(row)
    scaler = gradient_scaler(device, dtype)
    if state is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    net = Objective(model, experiment)
    if ranks.world > 1:  # after resuming: DDP starts every rank from rank 0's weights and buffers
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    stopped = False
    for epoch in range(start_epoch, experiment.epochs):
        if stop_after is not None and epoch - start_epoch >= stop_after:
            break
        if experiment.early_stopping and epoch - best["epoch"] >= experiment.early_stopping:
            stopped = True
            break
        started = time.perf_counter()
        order = torch.randperm(len(train_data), generator=shuffle, device=device)
        if ranks.world > 1:
            dist.broadcast(order, 0)  # one permutation for all, whatever another device's generator draws
            # dropout differs between ranks and depends on (seed, epoch, rank) only, so a resumed
            # run draws the same masks without every rank's generator state in the checkpoint
            torch.manual_seed(int(np.random.SeedSequence([experiment.seed, epoch, ranks.rank]).generate_state(1)[0]))
        train_loss, train_acc, images = run_epoch(
            net, optimizer, scheduler if schedule_every == "step" else None, train_data, order,
            experiment, views, augment_rng, inputs, dtype, f"epoch {epoch + 1}/{experiment.epochs}", ranks, scaler,
        )
        if ranks.world > 1:  # per-rank BatchNorm statistics on CPU: keep rank 0's, as DDP would next step
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        seconds = time.perf_counter() - started
        val_loss, val_acc = evaluate_shared(model, val_data, inputs, dtype, ranks)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "img_per_s": len(train_data) / seconds,
            "images": images,
        }
        if schedule_every == "epoch" and scheduler is not None:
            scheduler.step()
        elif schedule_every == "val":
            scheduler.step(val_loss)
        if val_loss < best["val_loss"]:
            best = {"epoch": epoch + 1, "val_loss": val_loss,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        history.append(row)
        on_epoch(row)
        log(f"epoch {epoch + 1}/{experiment.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}, {row['img_per_s']:,.0f} img/s")
        if ranks.rank == 0:  # every rank holds the same state; one writer
            save_atomic({
                "fingerprint": expected, "epoch": epoch + 1, "history": history, "best": best,
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": _rng_states(shuffle, augment_rng),
                "name": experiment.model, "kwargs": experiment.model_kwargs,
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
            }, checkpoint)

    if experiment.early_stopping and best["state"] is not None:
        model.load_state_dict(best["state"])  # Keras' restore_best_weights
    return Result(model, history, best["epoch"], stopped)


def transfer(model: nn.Module, state: dict, freeze: bool, log: Callable[[str], None]) -> None:
    """Copy the pretrained tensors whose name and shape match, except the classifier (the last
    Linear layer, which learns the new task from scratch); `freeze` trains the classifier only."""
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    fresh = {name for name, p in model.named_parameters() if any(p is q for q in classifier.parameters())}
    own = model.state_dict()
    copied = {k: v for k, v in state["state_dict"].items()
              if k in own and own[k].shape == v.shape and k not in fresh}
    if not copied:
        raise AuglabError(f"transfer from {state['name']!r}: no tensor matches {type(model).__name__}'s")
    model.load_state_dict(copied, strict=False)
    if freeze:
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name not in copied
    log(f"transfer: {len(copied)} of {len(own)} tensors from a {state['name']} model"
        f"{'; only the rest train' if freeze else ''}")


def save_model(path: Path, experiment: Experiment, model: nn.Module, stats: dict, class_names: list[str]) -> None:
    """The model checkpoint evaluation reads: {name, kwargs, state_dict} plus what input needs."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_atomic({"name": experiment.model, "kwargs": experiment.model_kwargs, "state_dict": state,
                 "image_size": model.image_size, "mean": stats["mean"], "std": stats["std"],
                 "class_names": class_names, "dataset": experiment.dataset}, path)


MODEL_KEYS = ("name", "kwargs", "state_dict", "image_size", "mean", "std", "class_names", "dataset")


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild a saved model (weights_only: no code runs from the file), in eval mode. A file that
    is missing, torn, not a save_model file, or whose weights do not fit the architecture it
    names is an AuglabError naming the file."""
    expected = "expected a model.pt written by the train stage"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise AuglabError(f"{path}: missing, {expected}") from None
    except UNREADABLE as e:
        raise AuglabError(f"{path}: unreadable, truncated or not a torch file "
                          f"({type(e).__name__}: {first_line(e)}), {expected}") from None
    missing = [key for key in MODEL_KEYS if key not in state] if isinstance(state, dict) else list(MODEL_KEYS)
    if missing:
        raise AuglabError(f"{path}: no {', '.join(missing)} in it, {expected}")
    model = models.build(state["name"], state["kwargs"])
    found = {key: tuple(tensor.shape) for key, tensor in state["state_dict"].items()}
    wanted = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    misfits = [f"{key} {found.get(key, 'none')}, expected {wanted.get(key, 'none')}"
               for key in dict.fromkeys([*wanted, *found]) if found.get(key) != wanted.get(key)]
    if misfits:  # weights of another architecture, or of an older version of this one
        more = f" (and {len(misfits) - 1} more)" if len(misfits) > 1 else ""
        raise AuglabError(f"{path}: weights do not fit the {state['name']} {state['kwargs']} it names: "
                          f"{misfits[0]}{more}")
    model.load_state_dict(state["state_dict"])
    return model.to(device).eval(), state
