"""Batched, seeded augmentation ops and the recipes that write them as Parquet shards.

Every op maps a uint8 batch (N, C, H, W) to a uint8 batch of the same shape, draws its
randomness from an explicit torch.Generator, and works on the whole batch at once. The affine
ops (rotation, translation, zoom, shear) are 3x3 matrices in normalized coordinates; a view
multiplies its matrices and resamples once (bilinear, zero fill), so rotation + shear + zoom
blur an image once, not three times. Then come the pixel ops, in this order: elastic, hflip,
erasing, noise.

Ranges follow Keras' ImageDataGenerator, which the studies used: rotation r -> angle uniform in
[-r, r] degrees; translation t -> shift uniform in [-t, t] of the side, per axis; zoom z ->
scale uniform in [1-z, 1+z], per axis independently; shear s -> angle uniform in [-s, s] degrees.
The matrices are composed as Keras does: rotation @ translation @ shear @ zoom.

**The same bytes on every CPU.** torch picks a SIMD kernel per host (AVX-512, AVX2 or plain),
and float32 kernels that round differently (grid_sample at arbitrary positions, randn, exp)
moved 26 of 7.84 million pixels by one level between paths. So every number that decides a
pixel is computed in one of two ways whose result cannot depend on the kernel:
- float64 elementwise arithmetic in a fixed order: +, -, *, /, sqrt and rounding are exact IEEE
  operations, correctly rounded whatever the vector width, and each is its own kernel (no fused
  multiply-add); the float64 draws (rand, randn) and transcendentals (cos, sin, exp) gave the
  same bits on every kernel path, where float32 randn and exp did not (tests/test_host_stable.py
  runs the stages under ATEN_CPU_CAPABILITY=avx2 and =default). Sums are written out term by
  term (`compose`, `_blur`), never left to a reduction, convolution or BLAS call whose order the
  kernel chooses.
- exact arithmetic for the resampling itself: a sampling position is a sum of two float64
  terms (a column and a row term of the affine map, or a pixel and its elastic displacement),
  each rounded once to 1/4096 pixel (`TERM_BITS`); the sum, its rounding to 1/256 pixel
  (`FRACTION_BITS`) and bilinear interpolation on a power-of-two canvas then involve only dyadic
  numbers that fit float32, so nothing rounds (see `sample_at`) and grid_sample gives the same
  bytes on every path, CUDA included.
A term can only round differently if a host's transcendental differed in its last bit (none did
here) and the term fell within that ulp of a 1/8192-pixel boundary: about 2^-36 per term.
bench/augment_speed.py measures what this costs against torchvision.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from auglab import AuglabError, shards

BATCH = 1024  # images per recipe batch: amortizes dispatch (4096 ran 1.6x slower here)
WARP_CHUNK = 128  # images per resampling pass: its canvas and grid (1.3 MB) stay in cache
FRACTION_BITS = 8  # a sampling position is rounded to 1 / 2**FRACTION_BITS of a pixel (a step)
TERM_BITS = 12  # the terms that sum to a position are rounded to 1 / 2**TERM_BITS of a pixel first
FILLS = ("zeros", "nearest")  # outside the image: black, or the nearest edge pixel (Keras' default)


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) float64 uniform in [low, high), drawn on the generator's device."""
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)


def _identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(3, device=device, dtype=torch.float64).expand(n, 3, 3).clone()


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) a @ b in float64, each entry summed in a fixed order (matmul may pick its own)."""
    out = torch.empty_like(a)
    for i in range(3):
        for j in range(3):
            out[:, i, j] = a[:, i, 0] * b[:, 0, j] + a[:, i, 1] * b[:, 1, j] + a[:, i, 2] * b[:, 2, j]
    return out


# --- affine ops: (n,) random parameters -> (n, 3, 3) float64 matrices, output -> input coords ---


def rotation_matrix(n: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    angle = _uniform(n, -strength, strength, generator) * (math.pi / 180)
    m = _identity(n, generator.device)
    m[:, 0, 0], m[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    m[:, 1, 0], m[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    return m


def translation_matrix(n: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    m = _identity(n, generator.device)
    # a shift of t * side is 2t in normalized [-1, 1] coordinates
    m[:, 0, 2] = 2 * _uniform(n, -strength, strength, generator)
    m[:, 1, 2] = 2 * _uniform(n, -strength, strength, generator)
    return m


def zoom_matrix(n: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    m = _identity(n, generator.device)
    m[:, 0, 0] = _uniform(n, 1 - strength, 1 + strength, generator)  # > 1 samples a wider area:
    m[:, 1, 1] = _uniform(n, 1 - strength, 1 + strength, generator)  # the content shrinks
    return m


def shear_matrix(n: int, generator: torch.Generator, strength: float) -> torch.Tensor:
    angle = _uniform(n, -strength, strength, generator) * (math.pi / 180)
    m = _identity(n, generator.device)
    m[:, 0, 1], m[:, 1, 1] = -torch.sin(angle), torch.cos(angle)
    return m


AFFINE: dict[str, Callable[..., torch.Tensor]] = {  # in Keras' composition order
    "rotation": rotation_matrix,
    "translation": translation_matrix,
    "shear": shear_matrix,
    "zoom": zoom_matrix,
}


# --- resampling: bilinear at positions rounded to 1/256 pixel, exact in float32 -----------------


def _canvas(images: torch.Tensor, fill: str) -> tuple[torch.Tensor, int, int]:
    """float32 (N, C, Hc, Wc) copy of uint8 images on a power-of-two canvas (at least 2 pixels of
    `fill` on every side), and the canvas row and column of pixel (0, 0)."""
    if fill not in FILLS:
        raise AuglabError(f"augment fill {fill!r}: expected one of {', '.join(FILLS)}")
    h, w = images.shape[-2:]
    hc, wc = 1 << (h + 3).bit_length(), 1 << (w + 3).bit_length()
    top, left = (hc - h) // 2, (wc - w) // 2
    padding = (left, wc - w - left, top, hc - h - top)
    mode = "constant" if fill == "zeros" else "replicate"
    return F.pad(images.float(), padding, mode=mode), top, left


def steps(x: torch.Tensor) -> torch.Tensor:
    """float64 pixel offsets -> float32 in 1/2**FRACTION_BITS-pixel steps, rounded to 1/16 step.

    Every value is then a multiple of 1/16 below 2**19 (offsets are clamped to +-2047 pixels,
    far outside any image), and so is exact in float32, as is the sum of two of them.
    """
    fine = 1 << (TERM_BITS - FRACTION_BITS)
    return x.clamp(-2047, 2047).mul_(1 << TERM_BITS).round_().div_(fine).float()


def sample_at(images: torch.Tensor, positions: torch.Tensor, fill: str = "zeros") -> torch.Tensor:
    """uint8 (N, C, H, W) read bilinearly at float32 (N, H, W, 2) positions (x, y) in steps (see
    `steps`; 0 = the first pixel's centre), each rounded to a whole step (1/256 pixel); outside
    the image, `fill`. Overwrites `positions`.

    Why this is exact: the positions are dyadic numbers that fit float32, and on a power-of-two
    canvas every coordinate grid_sample derives from them is a multiple of 2**-8 of modest size;
    its bilinear weights are multiples of 2**-16 below 1, each weight times a pixel (<= 255)
    fits float32's 24 bits, and so does their sum. Nothing rounds, so the result is the same
    whatever order or fused multiply-adds a kernel uses, on any CPU path and on CUDA;
    tests/test_host_stable.py compares it with integer arithmetic.
    """
    out = torch.empty_like(images)
    for start in range(0, len(images), WARP_CHUNK):  # a chunk's temporaries stay in cache
        part = slice(start, start + WARP_CHUNK)
        out[part] = _sample_chunk(images[part], positions[part], fill)
    return out


def _sample_chunk(images: torch.Tensor, positions: torch.Tensor, fill: str) -> torch.Tensor:
    canvas, top, left = _canvas(images, fill)
    (h, w), (hc, wc) = images.shape[-2:], canvas.shape[-2:]
    one = 1 << FRACTION_BITS
    # past a 2-pixel border every read is `fill` (beyond the canvas: zeros, or border's edge)
    grid = positions.clamp_(-2 * one, (max(h, w) + 1) * one).round_()  # integers below 2**14
    # grid_sample's coordinate of canvas pixel p is (2p + 1) / side - 1, p = step / one + offset
    for axis, side, offset in ((0, wc, left), (1, hc, top)):  # multiples of 2**-(bits + 1) / side
        grid[..., axis].mul_(2 / (one * side)).add_((2 * offset + 1) / side - 1)
    padding = "zeros" if fill == "zeros" else "border"
    out = F.grid_sample(canvas, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def warp(images: torch.Tensor, matrices: torch.Tensor, fill: str = "zeros") -> torch.Tensor:
    """Resample uint8 (N, C, H, W) through (N, 3, 3) output->input matrices in normalized
    coordinates (align_corners=False, as affine_grid), in one pass."""
    n, _, h, w = images.shape
    m = matrices.to(images.device, torch.float64).view(n, 3, 3, 1)
    u = (2 * torch.arange(w, device=images.device, dtype=torch.float64) + 1) / w - 1  # normalized
    v = (2 * torch.arange(h, device=images.device, dtype=torch.float64) + 1) / h - 1  # output coords
    positions = torch.empty((n, h, w, 2), device=images.device)
    for axis, side in ((0, w), (1, h)):
        # input pixel (m_axis . (u, v, 1) + 1) side / 2 - 1/2, as a column term plus a row term
        column = steps(m[:, axis, 0] * u * (side / 2))
        row = steps(((m[:, axis, 1] * v + m[:, axis, 2]) + 1) * (side / 2) - 0.5)
        torch.add(column.view(n, 1, w), row.view(n, h, 1), out=positions[..., axis])
    return sample_at(images, positions, fill)


# --- pixel ops: uint8 (N, C, H, W) -> uint8 (N, C, H, W) ---------------------------------------


def _chosen(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """(n, 1, 1, 1) bool: which images an op with probability p applies to."""
    return (torch.rand(n, generator=generator, device=generator.device) < p).to(device).view(n, 1, 1, 1)


def hflip(images: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Mirror left-right with probability `strength` (exact: no resampling)."""
    return torch.where(_chosen(len(images), strength, generator, images.device), images.flip(-1), images)


def noise(images: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Add gaussian noise of std `strength` pixel values (float64, rounded half to even)."""
    sample = torch.randn(images.shape, generator=generator, device=generator.device, dtype=torch.float64)
    return (images.double() + strength * sample.to(images.device)).round_().clamp_(0, 255).to(torch.uint8)


def _gaussian_kernel(sigma: float) -> list[float]:
    radius = max(1, math.ceil(2 * sigma))
    weights = [math.exp(-(x * x) / (2 * sigma * sigma)) for x in range(-radius, radius + 1)]
    return [weight / math.fsum(weights) for weight in weights]


def _blur(field: torch.Tensor, kernel: list[float], dim: int) -> torch.Tensor:
    """Gaussian blur of float64 (..., H, W) along `dim` (-1 or -2), reflect-padded, the taps summed
    in a fixed order (a convolution would let the kernel choose the order)."""
    pad = len(kernel) // 2
    padded = torch.nn.functional.pad(field, (pad, pad, 0, 0) if dim == -1 else (0, 0, pad, pad), mode="reflect")
    size = field.shape[dim]
    out = kernel[0] * padded.narrow(dim, 0, size)
    for tap in range(1, len(kernel)):
        out = out + kernel[tap] * padded.narrow(dim, tap, size)
    return out


def elastic(images: torch.Tensor, generator: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """Simard et al. 2003: a random displacement field, smoothed by a gaussian of `sigma` pixels
    and scaled to `alpha` pixels of standard deviation, resampled bilinearly (zero fill)."""
    n, _, h, w = images.shape
    field = 2 * torch.rand((n, 2, h, w), generator=generator, device=generator.device, dtype=torch.float64) - 1
    kernel = _gaussian_kernel(sigma)
    field = _blur(_blur(field.to(images.device), kernel, -1), kernel, -2)
    # std of blurred uniform(-1, 1) noise, away from the border: sqrt(1/3) * sum(k^2) per axis
    scale = alpha / (math.sqrt(1 / 3) * math.fsum(k * k for k in kernel))
    # a pixel's own index in steps (exact) plus its displacement in steps
    cols = torch.arange(w, device=images.device, dtype=torch.float32).mul_(1 << FRACTION_BITS)
    rows = torch.arange(h, device=images.device, dtype=torch.float32).mul_(1 << FRACTION_BITS)
    positions = torch.stack([cols.view(1, 1, w) + steps(scale * field[:, 0]),
                             rows.view(1, h, 1) + steps(scale * field[:, 1])], dim=-1)
    return sample_at(images, positions)


def erasing(images: torch.Tensor, generator: torch.Generator, p: float, area: list[float]) -> torch.Tensor:
    """Zhong et al. 2017 random erasing: with probability p, zero one rectangle of `area`
    [min, max] of the image, aspect ratio log-uniform in [0.3, 3.3]."""
    n, _, h, w = images.shape
    fraction = _uniform(n, area[0], area[1], generator)
    aspect = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), generator))
    eh = (fraction * h * w * aspect).sqrt().round().clamp(1, h)
    ew = (fraction * h * w / aspect).sqrt().round().clamp(1, w)
    top = (_uniform(n, 0, 1, generator) * (h - eh + 1)).floor()
    left = (_uniform(n, 0, 1, generator) * (w - ew + 1)).floor()
    rows = torch.arange(h, device=generator.device).view(1, h, 1)
    cols = torch.arange(w, device=generator.device).view(1, 1, w)
    inside = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
              & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)))
    mask = inside.unsqueeze(1).to(images.device) & _chosen(n, p, generator, images.device)
    return images.masked_fill(mask, 0)


PIXEL: dict[str, Callable[..., torch.Tensor]] = {  # in application order
    "elastic": elastic,
    "hflip": hflip,
    "erasing": erasing,
    "noise": noise,
}


def _affine_op(name: str) -> Callable[..., torch.Tensor]:
    def op(images: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
        return warp(images, AFFINE[name](len(images), generator, strength))

    op.__name__ = name
    op.__doc__ = f"{name} alone, as one warp"
    return op


# Every op on its own: (images uint8 (N, C, H, W), generator, **kwargs) -> images.
OPS: dict[str, Callable[..., torch.Tensor]] = {**{n: _affine_op(n) for n in AFFINE}, **PIXEL}


def apply_view(images: torch.Tensor, ops: dict[str, dict], generator: torch.Generator) -> torch.Tensor:
    """Apply a view's ops ({name: kwargs}, see params.View.ops) to a uint8 batch: the affine
    ones composed into a single warp (filling outside the image as `fill` says: {"mode": one of
    FILLS}, zeros by default), then the pixel ops in PIXEL order."""
    unknown = sorted(set(ops) - set(OPS) - {"fill"})
    if unknown:
        raise AuglabError(f"augment op(s) {unknown}: unknown; known: {', '.join(OPS)}")
    n = len(images)
    affine = [name for name in AFFINE if name in ops]
    if affine:
        matrix = _identity(n, generator.device)
        for name in affine:
            matrix = compose(matrix, AFFINE[name](n, generator, **ops[name]))
        images = warp(images, matrix, ops.get("fill", {}).get("mode", "zeros"))
    for name, op in PIXEL.items():
        if name in ops:
            images = op(images, generator, **ops[name])
    return images


# --- recipes -------------------------------------------------------------------------------


def plan(labels: np.ndarray, views: int, copies: int, balance: bool) -> tuple[np.ndarray, np.ndarray]:
    """Which source row and which view each augmented image comes from: (M,) and (M,).

    Order: copy-major, then view, then source. With `balance`, each class's rows are cycled up
    to the largest class's count, classes interleaved.
    """
    if balance:
        members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        longest = max(len(m) for m in members)
        sources = np.stack([m[np.arange(longest) % len(m)] for m in members], axis=1).reshape(-1)
    else:
        sources = np.arange(len(labels))
    source_rows = np.tile(sources, views * copies)
    view_rows = np.tile(np.repeat(np.arange(views), len(sources)), copies)
    return source_rows, view_rows


def generator_for(seed: int, shard: int, device: str = "cpu") -> torch.Generator:
    """An independent torch generator per (seed, shard): np SeedSequence mixes the pair."""
    state = int(np.random.SeedSequence([seed, shard]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator(device=device).manual_seed(state)


@dataclass
class Samples:
    """Originals and the first augmented views of a few source rows, for the sample grid."""

    rows: list[int]
    per_row: int
    views: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def take(self, source_rows: np.ndarray, images: np.ndarray) -> None:
        for row in self.rows:
            kept = self.views.setdefault(row, [])
            for index in np.flatnonzero(source_rows == row)[: self.per_row - len(kept)]:
                kept.append(images[index].copy())


def write_recipe(
    directory: Path,
    source: shards.Split,
    name: str,
    views: list[dict[str, dict]],
    copies: int,
    balance: bool,
    originals: bool,
    seed: int,
    samples: Samples | None = None,
    rows_per_shard: int = shards.ROWS_PER_SHARD,
) -> shards.SplitInfo:
    """Augment a labelled split and write it as shards of split `name` into `directory`.

    Rows: the originals first (if asked; origin=real), then the planned views (origin=augment),
    ids 0..N-1, source_id = the source row's id. Each shard draws from its own generator
    (seed, shard index), so output bytes depend only on the inputs and shards are independent.
    """
    if source.labels is None:
        raise AuglabError(f"augment {name}: source split is unlabelled")
    height, width = source.images.shape[1:]
    source_rows, view_rows = plan(source.labels, len(views), copies, balance)
    offset = len(source) if originals else 0
    total = offset + len(source_rows)
    layout = shards.schema(height=height, width=width, dataset=source.metadata["dataset"], split=name,
                           classes=int(source.metadata["classes"]), augmented=True)
    bar = tqdm(total=total, unit="img", desc=f"{source.metadata['dataset']}/{name}", file=sys.stderr,
               mininterval=1.0, disable=None)  # None: a bar on a terminal, quiet in logs
    with bar, shards.ShardWriter(directory, layout, total, rows_per_shard=rows_per_shard) as writer:
        if originals:
            writer.write(np.arange(len(source)), source.labels, source.images, source_id=source.ids,
                         origin=np.full(len(source), "real"))
            bar.update(len(source))
        for shard_start in range(0, total, rows_per_shard):
            generator = generator_for(seed, shard_start // rows_per_shard)
            start = max(shard_start, offset)
            for batch_start in range(start, min(shard_start + rows_per_shard, total), BATCH):
                stop = min(batch_start + BATCH, shard_start + rows_per_shard, total)
                rows = source_rows[batch_start - offset : stop - offset]
                which = view_rows[batch_start - offset : stop - offset]
                batch = torch.from_numpy(source.images[rows]).unsqueeze(1)  # (B, 1, H, W) uint8
                for v, ops in enumerate(views):
                    selected = torch.from_numpy(np.flatnonzero(which == v))
                    if len(selected):
                        batch[selected] = apply_view(batch[selected], ops, generator)
                images = batch.squeeze(1).numpy()
                writer.write(np.arange(batch_start, stop), source.labels[rows], images,
                             source_id=source.ids[rows], origin=np.full(len(rows), "augment"))
                if samples is not None:
                    samples.take(rows, images)
                bar.update(stop - batch_start)
        return writer.close()
