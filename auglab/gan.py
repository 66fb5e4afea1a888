"""A conditional GAN for 28x28 grayscale images: projection discriminator with an auxiliary
classifier, hinge loss, spectral norm, two time-scale Adam, an EMA generator; resumable
training; seeded sampling into labelled uint8 images.

Why this GAN. The discriminator scores `psi(h) + <embed(y), h>` (projection, Miyato & Koyama
2018): the class enters as an inner product with the image features, not as an input channel.
Beside it sits an auxiliary classifier head (AC-GAN's), trained on real images only; the
generator is rewarded when that head recognizes the asked-for class in its samples. Classifying
real images only avoids AC-GAN's known collapse towards easy, low-diversity samples (its head
also learned from fakes). Measured on MNIST, 3,000 steps, CAS with LeNet-5 (see README):
projection alone 0.838, projection + auxiliary head 0.881; the same projection GAN with equal
learning rates collapsed within each class (one digit per class, CAS 0.753), which the two
time-scale rates (D 4x G) fixed. Spectral norm on every discriminator layer and the hinge loss
keep the small nets stable at fixed learning rates; we sample from an exponential moving average
of the generator weights (Yazici et al. 2019), its batchnorm statistics re-estimated on generated
batches after training. The generator conditions both its input (a class embedding beside z)
and its batchnorms (class-conditional gains and biases, as in BigGAN).

Training length and sampling, measured by CAS (LeNet-5 on 55,000 samples, MNIST val, 2026-12-03):
12,000 steps of 64 images beat 6,000 of 128 (the same images seen, twice the updates) by 0.009,
and drawing z from N(0, 1.5^2) rather than N(0, 1) adds 0.008: at z 1 the EMA generator's digits
are too typical, and a classifier trained on them misses the real set's odd ones. Tried and left
out: a generator per class (grouped layers, each class its own weights; CAS unchanged at 1.4x the
time), a weaker or stronger auxiliary pull on MNIST (0.3 or 2: no better; Fashion-MNIST's
garments gain from 0.3), G learning rate 2e-4 (worse).

Images are uint8 on the device; the GAN sees them scaled to [-1, 1] (`to_unit`), and samples
return to uint8 by `to_uint8`, the exact inverse on the 256 grid.

Sampling runs a float64 copy of the networks (`write_samples`). In float32 the kernels torch
picks per CPU (AVX-512, AVX2, plain) and its vectorized randn round differently, and a pixel
near a level boundary lands on another level; in float64 the noise comes from scalar code on
every path and the networks' outputs agree to ~1e-15, so a pixel changes only if it lies within
that of a boundary (about 1e-12 per pixel; none in the SIMD test). Not a proof, as the integer
warps of auglab.augment are, but the same samples from the same generator.pt on every CPU.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm
from tqdm import tqdm

from auglab import AuglabError, augment, checkpoint, shards
from auglab.params import GanConfig
from auglab.runtime import DeviceData, autocast_dtype

SAMPLE_BATCH = 1000
RECALIBRATION_BATCHES = 20
MAX_ROUNDS = 50  # redraws of rejected samples before giving up


# --- pixels ----------------------------------------------------------------------------------


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 1, H, W) -> float32 in [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float in [-1, 1] -> uint8, rounding to the nearest of the 256 levels (to_unit's inverse)."""
    return x.double().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


# --- networks --------------------------------------------------------------------------------


class Generator(nn.Module):
    """(z, y) -> (B, 1, 28, 28) in [-1, 1]: dense to 7x7, two stride-2 transposed convolutions;
    the class conditions the input (an embedding beside z) and every batchnorm."""

    def __init__(self, z_dim: int, width: int, classes: int = 10) -> None:
        super().__init__()
        self.z_dim, self.classes = z_dim, classes
        self.embed = nn.Embedding(classes, z_dim)
        self.dense = nn.Linear(2 * z_dim, 2 * width * 7 * 7)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)  # 7 -> 14
        self.up2 = nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1)  # 14 -> 28
        self.norm0 = nn.BatchNorm2d(2 * width, affine=False)
        self.norm1 = nn.BatchNorm2d(width, affine=False)
        self.gain0, self.bias0 = nn.Embedding(classes, 2 * width), nn.Embedding(classes, 2 * width)
        self.gain1, self.bias1 = nn.Embedding(classes, width), nn.Embedding(classes, width)
        for gain in (self.gain0, self.gain1):
            nn.init.ones_(gain.weight)
        for bias in (self.bias0, self.bias1):
            nn.init.zeros_(bias.weight)

    @staticmethod
    def _condition(h: torch.Tensor, norm: nn.Module, gain: nn.Embedding, bias: nn.Embedding,
                   y: torch.Tensor) -> torch.Tensor:
        return F.relu(norm(h) * gain(y)[:, :, None, None] + bias(y)[:, :, None, None])

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.dense(torch.cat([z, self.embed(y)], dim=1)).view(len(z), -1, 7, 7)
        h = self._condition(h, self.norm0, self.gain0, self.bias0, y)
        h = self._condition(self.up1(h), self.norm1, self.gain1, self.bias1, y)
        return torch.tanh(self.up2(h))


class Discriminator(nn.Module):
    """(x, y) -> ((B,) realness, (B, classes) class logits): three spectrally normalized
    stride-2 convolutions, then `linear(h) + <embed(y), h>` (the projection) on the flattened
    4x4 features, and beside it an auxiliary classifier head on the same features."""

    def __init__(self, width: int, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(1, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 28 -> 14
            spectral_norm(nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 14 -> 7
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)), nn.LeakyReLU(0.2),  # 7 -> 4
            nn.Flatten(),
        )
        self.linear = spectral_norm(nn.Linear(4 * width * 16, 1))
        self.embed = spectral_norm(nn.Embedding(classes, 4 * width * 16))
        self.classify = nn.Linear(4 * width * 16, classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(1), self.classify(h)


def build(config: GanConfig) -> tuple[Generator, Discriminator]:
    return Generator(config.z_dim, config.g_width), Discriminator(config.d_width)


# --- training --------------------------------------------------------------------------------


@dataclass
class Result:
    generator: Generator  # the EMA generator, batchnorm recalibrated, eval mode
    discriminator: Discriminator  # eval mode; its auxiliary head can vet samples (`accept`)
    history: list[dict]  # one row per `log_every` steps: step, d_loss, g_loss, d_real, d_fake, img_per_s


def fingerprint(config: GanConfig, data: DeviceData) -> str:
    """What a GAN checkpoint must match to be resumed: the config and the training data."""
    return checkpoint.fingerprint(config.model_dump(mode="json"), [data.digest()])


def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


@torch.no_grad()
def recalibrate(generator: Generator, generator_rng: torch.Generator, batch: int) -> None:
    """Re-estimate the batchnorm statistics of (EMA) weights on class-balanced generated batches:
    the running statistics of the live generator do not belong to the averaged weights."""
    device = next(generator.parameters()).device
    for norm in (generator.norm0, generator.norm1):
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the recalibration batches
    generator.train()
    for _ in range(RECALIBRATION_BATCHES):
        z = torch.randn(batch, generator.z_dim, generator=generator_rng, device=device)
        generator(z, torch.arange(batch, device=device) % generator.classes)
    generator.eval()


def train(
    config: GanConfig,
    data: DeviceData,
    path: Path,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
) -> Result:
    """Train for `config.steps` steps on uint8 data; resume from the checkpoint at `path` if it matches.

    A checkpoint (both networks, the EMA, both optimizers, every random state, the history) is
    written atomically every `config.checkpoint_every` steps. `stop_after` ends this call after
    that many steps (tests use it to interrupt).
    """
    device = data.images.device
    dtype = autocast_dtype(device, config.precision)
    torch.manual_seed(config.seed)
    generator, discriminator = (net.to(device) for net in build(config))
    ema = copy.deepcopy(generator).requires_grad_(False)
    betas = (config.beta1, config.beta2)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.g_lr, betas=betas)
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=config.d_lr, betas=betas)
    batch_rng = torch.Generator(device=device).manual_seed(config.seed)
    noise_rng = torch.Generator(device=device).manual_seed(config.seed + 1)
    generators = {"batch": batch_rng, "noise": noise_rng}
    expected = fingerprint(config, data)
    keys = ("d_loss", "g_loss", "d_real", "d_fake")

    def sums(values: dict[str, float] | None = None) -> torch.Tensor:
        # (4,) float64 on the device, the row in progress: summed there, read once per log row;
        # float64 adds of the float32 losses in step order, as Python's float sum of .item() was
        return torch.tensor([(values or {}).get(key, 0.0) for key in keys], dtype=torch.float64, device=device)

    history: list[dict] = []
    step, totals, window_steps = 0, sums(), 0
    state = checkpoint.load_resumable(path, expected, log)
    if state is not None:
        for module, key in ((generator, "generator"), (discriminator, "discriminator"), (ema, "ema"),
                            (g_optimizer, "g_optimizer"), (d_optimizer, "d_optimizer")):
            module.load_state_dict(state[key])
        checkpoint.restore_rng(state["rng"], generators)
        history, step = state["history"], state["step"]
        totals, window_steps = sums(state["window"]["totals"]), state["window"]["steps"]
        log(f"resuming from {path} after step {step}")

    def save() -> None:
        checkpoint.save_atomic({
            "fingerprint": expected, "step": step, "history": history,
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "ema": ema.state_dict(), "g_optimizer": g_optimizer.state_dict(),
            "d_optimizer": d_optimizer.state_dict(),
            "rng": checkpoint.rng_states(generators, global_state=False),
            "window": {"totals": dict(zip(keys, totals.tolist(), strict=True)), "steps": window_steps},
        }, path)  # the window: the loss row in progress

    window_start, timed = time.perf_counter(), 0  # steps timed in this window by this call
    bar = tqdm(total=config.steps, initial=step, unit="step", desc="gan", file=sys.stderr, leave=False,
               mininterval=1.0, disable=None)
    first = step
    with bar:
        while step < config.steps and (stop_after is None or step - first < stop_after):
            rows = torch.randint(len(data), (config.batch_size,), generator=batch_rng, device=device)
            real, labels = to_unit(data.images[rows]), data.labels[rows]
            z = torch.randn(config.batch_size, config.z_dim, generator=noise_rng, device=device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                fake = generator(z, labels)
                d_real, class_real = discriminator(real, labels)
                d_fake, _ = discriminator(fake.detach(), labels)
                d_real, d_fake = d_real.float(), d_fake.float()
                d_loss = (F.relu(1.0 - d_real).mean() + F.relu(1.0 + d_fake).mean()
                          + config.aux_weight * F.cross_entropy(class_real.float(), labels))
            d_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            d_optimizer.step()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                score, class_fake = discriminator(fake, labels)
                g_loss = -score.float().mean() + config.aux_weight * F.cross_entropy(class_fake.float(), labels)
            g_optimizer.zero_grad(set_to_none=True)
            g_loss.backward()
            g_optimizer.step()
            update_ema(ema, generator, config.ema_decay if step >= config.ema_start else 0.0)
            step += 1
            window_steps += 1
            timed += 1
            totals += torch.stack([d_loss.detach(), g_loss.detach(), d_real.detach().mean(),
                                   d_fake.detach().mean()]).double()
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                seconds = time.perf_counter() - window_start
                row = {"step": step, **{k: v / window_steps for k, v in zip(keys, totals.tolist(), strict=True)},
                       "img_per_s": timed * config.batch_size / seconds}
                history.append(row)
                log(f"step {step}/{config.steps}: d loss {row['d_loss']:.3f} g loss {row['g_loss']:.3f} "
                    f"D(real) {row['d_real']:+.2f} D(fake) {row['d_fake']:+.2f}, {row['img_per_s']:,.0f} img/s")
                totals, window_steps, window_start, timed = sums(), 0, time.perf_counter(), 0
            if step % config.checkpoint_every == 0 and step < config.steps:
                save()
    if step < config.steps:  # interrupted on purpose (stop_after): leave a checkpoint to resume
        save()
    recalibrate(ema, torch.Generator(device=device).manual_seed(config.seed + 2), SAMPLE_BATCH)
    return Result(ema, discriminator.eval(), history)


# --- sampling --------------------------------------------------------------------------------


@torch.no_grad()
def sample(generator: Generator, labels: torch.Tensor, rng: torch.Generator, z_scale: float = 1.0) -> torch.Tensor:
    """uint8 (B, 1, 28, 28) images of the classes `labels`, drawn with `rng` (eval mode), in
    the generator's own dtype, from noise of standard deviation `z_scale`."""
    parameter = next(generator.parameters())
    images = []
    for start in range(0, len(labels), SAMPLE_BATCH):
        y = labels[start : start + SAMPLE_BATCH].to(parameter.device)
        z = torch.randn(len(y), generator.z_dim, generator=rng, device=parameter.device, dtype=parameter.dtype)
        images.append(to_uint8(generator(z * z_scale, y)))
    return torch.cat(images)


def sample_labels(per_class: int, classes: int) -> np.ndarray:
    """Row i has class i % classes: every prefix of the rows is (nearly) class-balanced."""
    return np.tile(np.arange(classes, dtype=np.uint8), per_class)


@torch.no_grad()
def accept(judge: Discriminator | None, images: torch.Tensor, labels: torch.Tensor, min_confidence: float) -> torch.Tensor:
    """(B,) bool: the discriminator's auxiliary classifier gives the asked-for class at least
    `min_confidence` on these uint8 images (all True without a judge or at 0)."""
    if judge is None or min_confidence <= 0:
        return torch.ones(len(labels), dtype=torch.bool, device=labels.device)
    weight = next(judge.parameters(), None)  # float64 when sampling (write_samples)
    _, logits = judge(to_unit(images).to(torch.float32 if weight is None else weight.dtype), labels)
    return torch.softmax(logits.float(), 1).gather(1, labels[:, None]).squeeze(1) >= min_confidence


def draw_shard(generator: Generator, labels: np.ndarray, rng: torch.Generator, judge: Discriminator | None,
               min_confidence: float, z_scale: float = 1.0) -> tuple[np.ndarray, int]:
    """uint8 (N, 28, 28) images of `labels`, each redrawn until `accept` passes it; also how
    many were drawn in all. Gives up, naming the class, after MAX_ROUNDS rounds."""
    device = next(generator.parameters()).device
    out = np.empty((len(labels), 28, 28), dtype=np.uint8)
    pending, drawn = np.arange(len(labels)), 0
    for _ in range(MAX_ROUNDS):
        wanted = torch.from_numpy(labels[pending].astype(np.int64)).to(device)
        images = sample(generator, wanted, rng, z_scale)
        passed = accept(judge, images, wanted, min_confidence).cpu().numpy()
        out[pending[passed]] = images[torch.from_numpy(passed).to(device)].squeeze(1).cpu().numpy()
        drawn += len(pending)
        pending = pending[~passed]
        if not len(pending):
            return out, drawn
    worst = int(np.bincount(labels[pending]).argmax())
    raise AuglabError(f"gan samples: class {worst} still has {int((labels[pending] == worst).sum())} images below "
                      f"min_confidence {min_confidence} after {MAX_ROUNDS} rounds; lower gan min_confidence")


def write_samples(directory: Path, generator: Generator, per_class: int, dataset: str, seed: int,
                  judge: Discriminator | None = None, min_confidence: float = 0.0, z_scale: float = 1.0,
                  rows_per_shard: int = shards.ROWS_PER_SHARD) -> tuple[shards.SplitInfo, float]:
    """`per_class` images of every class as split `gan` (origin=gan, source_id=-1); returns
    the split info and the acceptance rate of `accept`. Each shard draws its noise from its own
    generator (seed, shard index), and float64 copies of the networks draw and judge, so the
    bytes depend only on the weights and the seed, not on the CPU (see the module docstring)."""
    if per_class <= 0:
        raise AuglabError(f"gan samples: expected a positive count per class, got {per_class}")
    generator = copy.deepcopy(generator).double().eval()
    judge = copy.deepcopy(judge).double().eval() if judge is not None and min_confidence > 0 else None
    labels = sample_labels(per_class, generator.classes)
    layout = shards.schema(height=28, width=28, dataset=dataset, split="gan", classes=generator.classes,
                           augmented=True)
    drawn = 0
    with shards.ShardWriter(directory, layout, len(labels), rows_per_shard=rows_per_shard) as writer:
        for index, start in enumerate(range(0, len(labels), rows_per_shard)):
            rows = labels[start : start + rows_per_shard]
            rng = augment.generator_for(seed, index, str(next(generator.parameters()).device))
            images, tries = draw_shard(generator, rows, rng, judge, min_confidence, z_scale)
            drawn += tries
            writer.write(np.arange(start, start + len(rows)), rows, images,
                         source_id=np.full(len(rows), -1), origin=np.full(len(rows), "gan"))
        return writer.close(), len(labels) / drawn


def save_sampler(path: Path, config: GanConfig, result: Result, class_names: list[str]) -> None:
    """generator.pt: what sampling needs, written atomically: the config, the EMA generator, the
    discriminator (whose auxiliary head can vet samples) and the class names."""
    weights = checkpoint.cpu_weights
    checkpoint.save_atomic({"config": config.model_dump(mode="json"), "state_dict": weights(result.generator),
                            "discriminator": weights(result.discriminator), "class_names": class_names}, path)


def load_sampler(path: Path, device: torch.device) -> tuple[Generator, Discriminator, GanConfig, list[str]]:
    """The networks, config and class names `save_sampler` wrote, in eval mode on `device`."""
    saved = checkpoint.read(path, "expected a generator.pt written by the gan stage", device)
    config = GanConfig(**saved["config"])
    generator, discriminator = build(config)
    generator.load_state_dict(saved["state_dict"])
    discriminator.load_state_dict(saved["discriminator"])
    return generator.to(device).eval(), discriminator.to(device).eval(), config, saved["class_names"]
