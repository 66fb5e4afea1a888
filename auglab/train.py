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

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from auglab import AuglabError, augment, models, preprocess
from auglab.checkpoint import (
    fingerprint,
    load_resumable,
    restore_rng,
    rng_states,
    save_atomic,
    transfer,
)
from auglab.params import Experiment
from auglab.runtime import DeviceData, Ranks, autocast_dtype, eval_batch


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
    device = data.images.device
    # summed on the device and read once: float64, as Python's float sum of loss.item() was
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    step = eval_batch(device)
    for start in range(0, len(data), step):
        x = inputs(data.images[start : start + step])
        y = data.labels[start : start + step]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, scores = objective(model, x, y, 0.0)
        loss_sum += loss.double() * len(y)
        correct += (scores.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / len(data), correct.item() / len(data)


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


# --- the loop --------------------------------------------------------------------------------


def view_generator(augment_rng: torch.Generator, seed: int) -> torch.Generator:
    """The generator that picks each image's view: on the host, so that which rows get which view
    is known there without waiting for the GPU. On CPU it is the augmentation generator itself
    (the draws, and so the weights, are those of every earlier version)."""
    if augment_rng.device.type == "cpu":
        return augment_rng
    return torch.Generator().manual_seed(seed + 1)


def to_device(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host index tensor on `device`; to CUDA from pinned memory, so the copy queues behind the
    GPU's work instead of waiting for it."""
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index


def run_epoch(net: nn.Module, optimizer: torch.optim.Optimizer, step_scheduler, data: DeviceData,
              order: torch.Tensor, experiment: Experiment, views: list[dict], augment_rng: torch.Generator,
              inputs: Inputs, dtype: torch.dtype | None, desc: str, ranks: Ranks | None = None,
              scaler: torch.amp.GradScaler | None = None,
              view_rng: torch.Generator | None = None,
              after_step: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pass over `data` in `order` (a permutation); returns on the device (summed train loss,
    correct predictions, images trained on), summed over ranks: nothing in the loop waits for the
    GPU (no .item(), no boolean-mask indexing), the caller reads the sums once.

    `net` is an Objective, in DistributedDataParallel when several ranks share the epoch: each
    trains on its rows of every global batch of experiment.batch_size. `scaler` scales fp16
    losses (see `gradient_scaler`; its overflow check is the one sync per step it costs);
    disabled, it is a plain backward and step. `view_rng`, a host generator, picks the views
    (`view_generator`); None means `augment_rng`, which must then be a CPU one. `after_step` runs
    after every optimizer step (the weight average's update)."""
    ranks = ranks or Ranks()
    scaler = scaler or gradient_scaler(data.images.device, dtype)
    view_rng = view_rng or augment_rng
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
        if views:  # on the fly: every image gets one view, drawn at random on the host
            which = torch.randint(len(views), (len(rows),), generator=view_rng)  # (B,) int64, host
            for v, ops in enumerate(views):
                chosen = to_device(torch.nonzero(which == v).squeeze(1), device)  # ascending rows
                batch.index_copy_(0, chosen, augment.apply_view(batch.index_select(0, chosen), ops, augment_rng))
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
        if after_step is not None:
            after_step()
        loss_sum += loss.detach() * len(y)
        correct += (scores.detach().argmax(1) == y).sum()
        images += len(y)
        if step % 50 == 0 and not bar.disable:  # reading the loss waits for the GPU: on a TTY only
            seen = min((step + 1) * size, len(data))
            bar.set_postfix(loss=f"{loss_sum.item() * ranks.world / seen:.4f}",
                            img_s=f"{seen / (time.perf_counter() - started):,.0f}", refresh=False)
    if ranks.world > 1:
        for total in (loss_sum, correct, images):
            dist.all_reduce(total)
    return loss_sum, correct, images


def resample(images: np.ndarray, labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded draw of round(share * N) images without replacement, in their original order: each
    ensemble member's own resample of the training set (bagging)."""
    count = max(1, round(share * len(labels)))
    keep = np.sort(np.random.default_rng([seed, BAG_STREAM]).choice(len(labels), count, replace=False))
    return images[keep], labels[keep]


BAG_STREAM = 0xBA6  # keeps the bagging draw apart from every other stream seeded by `seed`


def gradient_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler for fp16 autocast, whose small gradients underflow to zero without it
    (bf16 has fp32's range and needs none): enabled for fp16 only, a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def resume_fingerprint(experiment: Experiment, train: DeviceData, val: DeviceData, init: dict | None) -> str:
    """What a checkpoint must match to be resumed: the params, the data and the initial weights.
    Keys at their schema default (nproc 1, normalize "dataset") are left out, so checkpoints from
    before those keys existed still resume."""
    unset = {key for key in ("nproc", "normalize", "ema")
             if getattr(experiment, key) == Experiment.model_fields[key].default}
    dumped = experiment.model_dump(mode="json", exclude=unset or None)
    return fingerprint(dumped, [train.digest(), val.digest()], (init or {}).get("state_dict"))


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
    val_last_only: bool = False,
) -> Result:
    """Train `experiment` on device-resident data; resume from `checkpoint` when it matches.

    `on_epoch` receives each epoch's metrics row (also replayed for resumed epochs, so a logger
    sees the whole history). `init_state` is a pretrained model checkpoint for transfer learning.
    `stop_after` ends the run after that many epochs of this call (tests use it to interrupt).
    Val is scored after every `experiment.val_every`-th epoch and the last (val_loss and val_acc are
    None in the rows between); `val_last_only` scores the last alone, for runs that use nothing but
    the final scores (S1's grid and batch cells). A run that stops early or steps its schedule on
    val loss is scored after every epoch regardless.
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
    view_rng = view_generator(augment_rng, experiment.seed)
    generators = {"shuffle": shuffle, "augment": augment_rng, **({"views": view_rng} if view_rng is not augment_rng else {})}
    views = [view.ops() for view in experiment.augment.values()]
    expected = resume_fingerprint(experiment, train_data, val_data, init_state)

    history: list[dict] = []
    best = {"epoch": 0, "val_loss": math.inf, "state": None}
    start_epoch = 0
    state = load_resumable(checkpoint, expected, log, ranks)
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"], generators)
        history, best, start_epoch = state["history"], state["best"], state["epoch"]
        log(f"resuming from {checkpoint} after epoch {start_epoch}")
        for row in history:
            on_epoch(row)
    scaler = gradient_scaler(device, dtype)
    if state is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    average = weight_average(model, experiment.ema)
    if average is not None and state is not None:
        average.load_state_dict(state["ema"])
    scored = average.module if average is not None else model  # what val scores and the run returns
    net = Objective(model, experiment)
    if ranks.world > 1:  # after resuming: DDP starts every rank from rank 0's weights and buffers
        net = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    val_every = experiment.epochs if val_last_only else experiment.val_every
    if experiment.early_stopping or schedule_every == "val":
        val_every = 1  # both read val loss after every epoch
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
        loss_sum, correct, images = run_epoch(
            net, optimizer, scheduler if schedule_every == "step" else None, train_data, order,
            experiment, views, augment_rng, inputs, dtype, f"epoch {epoch + 1}/{experiment.epochs}", ranks, scaler,
            view_rng, (lambda: average.update_parameters(model)) if average is not None else None,
        )
        train_loss, train_acc = loss_sum.item() / len(train_data), correct.item() / len(train_data)
        if ranks.world > 1:  # per-rank BatchNorm statistics on CPU: keep rank 0's, as DDP would next step
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        seconds = time.perf_counter() - started
        if (epoch + 1) % val_every == 0 or epoch + 1 == experiment.epochs:
            val_loss, val_acc = evaluate_shared(scored, val_data, inputs, dtype, ranks)
        else:
            val_loss = val_acc = None
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "img_per_s": len(train_data) / seconds,
            "images": images.item(),
        }
        if schedule_every == "epoch" and scheduler is not None:
            scheduler.step()
        elif schedule_every == "val":
            scheduler.step(val_loss)
        if val_loss is not None and val_loss < best["val_loss"]:
            best = {"epoch": epoch + 1, "val_loss": val_loss,
                    "state": {k: v.detach().clone() for k, v in scored.state_dict().items()}}
        history.append(row)
        on_epoch(row)
        scores = "" if val_loss is None else f"val loss {val_loss:.4f} acc {val_acc:.4f}, "
        log(f"epoch {epoch + 1}/{experiment.epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}, "
            f"{scores}{row['img_per_s']:,.0f} img/s")
        if ranks.rank == 0:  # every rank holds the same state; one writer
            save_atomic({
                "fingerprint": expected, "epoch": epoch + 1, "history": history, "best": best,
                "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_states(generators),
                "name": experiment.model, "kwargs": experiment.model_kwargs,
                **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {}),
                **({"ema": average.state_dict()} if average is not None else {}),
            }, checkpoint)

    if experiment.early_stopping and best["state"] is not None:
        scored.load_state_dict(best["state"])  # Keras' restore_best_weights
    return Result(scored, history, best["epoch"], stopped)


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of `model`'s weights and buffers (BN statistics), updated
    after every step: average <- decay * average + (1 - decay) * weights; None when decay is 0."""
    if decay == 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
