"""The model registry of the five studies: MLP, configurable CNN (and its named presets), ResNet, CapsNet.

Contract: `MODELS[name](**kwargs)` builds a network whose `forward(x)` maps (B, C, H, W) float32 to
(B, classes) scores, argmax = prediction. Every kwarg is a plain int/float/str/bool/list, so an
experiment's model name and kwargs in params.yaml go straight in through `build(name, kwargs)`.
Every model takes `in_channels=1`, `classes=10`, `image_size` and keeps `in_channels` and
`image_size` (the square input side it expects: 28, or 32 for LeNet-5, whose input the trainer
zero-pads) as attributes.

Objective: by default the trainer minimizes cross-entropy on `model(x)` (logits). A model with its
own objective defines `objective(x, y) -> (scalar loss, (B, classes) scores)` and the trainer calls
that instead. CapsNet does: its `forward` returns capsule lengths in [0, 1), and its objective is
the margin loss plus the weighted reconstruction loss of its decoder.

Checkpoints are `{name, kwargs, state_dict}`: `build(name, kwargs)` then `load_state_dict` restores
any model, because a state dict here holds only tensors whose shapes depend only on the kwargs
(auglab.checkpoint writes and reads them).

Why this file runs past ~400 lines: it is the registry, read as one list of what the studies
compare. Each family is 40-90 lines built from the shared pieces at the top (activations, conv
blocks, padding), and the registry, `build` and the size/FLOP counters sit under them; split per
family, the registry would import five files to say what one screen says here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from auglab import AuglabError

# --- shared pieces ---------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # slope 0.01 (PyTorch's default; Keras' LeakyReLU uses 0.3)
    "elu": nn.ELU,
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,  # no nonlinearity: S1's "CNN with linear activation"
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name; an unknown name lists the known ones."""
    if name not in ACTIVATIONS:
        raise AuglabError(f"activation {name!r}: unknown; known: {', '.join(sorted(ACTIVATIONS))}")
    return ACTIVATIONS[name]()


def check_choice(key: str, value: object, choices: Sequence[str]) -> None:
    """Raise if a string option is not one of `choices`."""
    if value not in choices:
        raise AuglabError(f"{key} {value!r}: expected one of {', '.join(choices)}")


def per_layer(key: str, value: float | Sequence[float], count: int) -> list:
    """One value for every layer (or block): a scalar is repeated, a list must have `count` entries."""
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * count
    if len(values) != count:
        raise AuglabError(f"{key} {list(value)}: expected one value or a list of {count}")
    return values


class ByteDropout(nn.Module):
    """Inverted dropout whose CPU mask comes from random bytes, seven per 64-bit draw.

    torch's CPU dropout draws one Bernoulli sample per element: a third of s0_cnn's training
    step here (bench/train_speed.py). Comparing random bytes with round(256 (1 - p)) is ~10x
    cheaper; the drop probability becomes a multiple of 1/256 (0.25 and 0.5 exactly, 0.3 ->
    0.3008). On CUDA, torch's fused dropout is already fast and is used as is.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.keep = round(256 * (1 - p))  # mask entries: byte < keep, byte uniform in 0..255

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(...) -> (...), same shape; identity in eval mode."""
        if not self.training or self.p == 0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, training=True)
        words = torch.empty((x.numel() + 6) // 7, dtype=torch.int64).random_(0, 1 << 56)  # 56 random bits
        random_bytes = words.view(torch.uint8).view(-1, 8)[:, :7].reshape(-1)[: x.numel()]  # little-endian
        mask = (random_bytes < self.keep).view(x.shape)
        return x * mask * (256 / self.keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def dropout_layers(p: float) -> list[nn.Module]:
    """[ByteDropout(p)] or [] when p == 0, so a net without dropout prints without no-op layers."""
    if not 0 <= p < 1:
        raise AuglabError(f"dropout {p}: expected a probability in [0, 1)")
    return [ByteDropout(p)] if p > 0 else []


# --- MLP -------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Flatten -> [Linear -> activation -> dropout] per hidden layer -> Linear to classes.

    S1's dense nets are 1-3 entries in `hidden`. S3's dropout lecture: hidden [128, 128, 64]
    with dropout 0 versus dropout [0.3, 0.2, 0.0] (0.3 after the first layer, 0.2 after the second).
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 10,
        image_size: int = 28,
        hidden: Sequence[int] = (128,),
        dropout: float | Sequence[float] = 0.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size = in_channels, image_size
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for units, p in zip(hidden, per_layer("dropout", dropout, len(hidden))):
            layers += [nn.Linear(width, units), make_activation(activation), *dropout_layers(p)]
            width = units
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, classes) logits."""
        return self.net(x)


# --- CNN -------------------------------------------------------------------------------------


class CNN(nn.Module):
    """Blocks of convs ([BN] + activation after each), then a 2x2 pool and dropout per block; dense head.

    `blocks` lists the filters of each conv per block: [[32], [64]] is conv32-pool-conv64-pool.
    Study variants are kwargs (S1): linear activation (`activation="linear"`), max / avg / no
    pooling (`pool`), `batchnorm`, relu + `dropout`, deeper BN nets ([[32, 32], [64, 64]]).
    The named architectures are presets in MODELS (lenet5, kaggle_cnn, s0_cnn, mastery_cnn,
    fan_in_cnn, fan_out_cnn); any preset default can be overridden by kwargs. `weight_init="glorot"`
    replaces PyTorch's default init with Keras' (glorot-uniform weights, zero biases).
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 10,
        image_size: int = 28,
        blocks: Sequence[Sequence[int]] = ((32,), (64,)),
        kernel: int | Sequence[int] = 3,
        padding: str = "same",
        pool: str = "max",
        batchnorm: bool = False,
        dropout: float = 0.0,
        activation: str = "relu",
        dense: Sequence[int] = (128,),
        dense_dropout: float = 0.0,
        global_pool: bool = False,
        weight_init: str = "torch",
    ) -> None:
        super().__init__()
        check_choice("padding", padding, ("same", "valid"))
        check_choice("weight_init", weight_init, ("torch", "glorot"))
        check_choice("pool", pool, ("max", "avg", "none"))
        if not blocks or not all(isinstance(b, Sequence) and b for b in blocks):
            raise AuglabError(f"blocks {blocks}: expected a non-empty list of non-empty filter lists")
        self.in_channels, self.image_size = in_channels, image_size
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for filters, k in zip(blocks, per_layer("kernel", kernel, len(blocks))):
            for width in filters:
                # A conv followed by BN needs no bias: BN's shift replaces it.
                layers.append(nn.Conv2d(channels, width, k, padding=padding, bias=not batchnorm))
                layers += [nn.BatchNorm2d(width)] if batchnorm else []
                layers.append(make_activation(activation))
                channels, side = width, side if padding == "same" else side - k + 1
            if pool != "none":
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
                side = side // 2  # floor, as the pools do
            layers += dropout_layers(dropout)
            if side < 1:
                raise AuglabError(f"blocks {blocks}: a {image_size}x{image_size} input shrinks to nothing")
        self.features = nn.Sequential(*layers)

        # Global average pooling keeps the head at `channels` inputs, whatever the image size.
        head: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if global_pool else []
        head.append(nn.Flatten())  # NCHW order even for channels_last input, so weights are portable
        width = channels if global_pool else channels * side * side
        for units in dense:
            head += [nn.Linear(width, units), make_activation(activation), *dropout_layers(dense_dropout)]
            width = units
        head.append(nn.Linear(width, classes))
        self.head = nn.Sequential(*head)
        if weight_init == "glorot":  # Keras' default: glorot-uniform weights, zero biases (S2's code)
            for layer in self.modules():
                if isinstance(layer, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, classes) logits."""
        return self.head(self.features(x))


# --- ResNet ----------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        nn.init.zeros_(self.bn2.weight)  # each block starts as identity: trains faster (Goyal et al. 2017)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, S, S) -> (B, C_out, S / stride, S / stride)."""
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(residual + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem conv-BN-ReLU, one stage of basic blocks per width (stride 2 from the second), GAP, linear.

    Defaults: 28 -> 28 -> 14 -> 7 pixels at widths 32 / 64 / 128, 0.31M parameters and about the
    compute of S4's Kaggle CNN (~1,000 train img/s on 2 CPU cores with bf16 + channels_last);
    sized for MNIST ~99.7% in ~15 augmented epochs.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 10,
        image_size: int = 28,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        if not widths or blocks_per_stage < 1:
            raise AuglabError(f"widths {widths}, blocks_per_stage {blocks_per_stage}: expected >= 1 of each")
        self.in_channels, self.image_size = in_channels, image_size
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks, channels = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, classes) logits."""
        features = self.blocks(self.stem(x))  # (B, widths[-1], S / 2^(stages-1), ...)
        return self.head(features.mean((2, 3)))  # global average pool; fine for channels_last


# --- CapsNet ---------------------------------------------------------------------------------


def squash(s: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (..., D): scale each vector to length |s|^2 / (1 + |s|^2), keep its direction."""
    squared = (s * s).sum(-1, keepdim=True)
    return s * (squared / (1 + squared)) / torch.sqrt(squared + 1e-8)  # eps: zero vectors stay zero


def margin_loss(
    lengths: torch.Tensor,
    target: torch.Tensor,
    upper: float = 0.9,
    lower: float = 0.1,
    down_weight: float = 0.5,
) -> torch.Tensor:
    """Sabour et al.'s eq. 4: lengths (B, K), target (B,) int64 -> scalar, summed over K, mean over B.

    The true class's capsule is pushed above `upper`; the others below `lower`, down-weighted so
    the start of training does not shrink every capsule.
    """
    present = F.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    absent_penalty = down_weight * (1 - present) * F.relu(lengths - lower) ** 2
    return (present * F.relu(upper - lengths) ** 2 + absent_penalty).sum(1).mean()


class CapsNet(nn.Module):
    """Sabour, Frosst & Hinton 2017: conv -> primary capsules -> class capsules by dynamic routing.

    `forward` returns capsule lengths (B, classes); `objective` adds the margin loss and the
    decoder's reconstruction loss. The defaults are the paper's (8.2M parameters, 1152 primary
    capsules on 28x28); e.g. conv_channels=64, primary_capsules=8 is a CPU-sized version.
    """

    def __init__(
        self,
        in_channels: int = 1,
        classes: int = 10,
        image_size: int = 28,
        conv_channels: int = 256,
        conv_kernel: int = 9,
        primary_capsules: int = 32,  # capsule channels: each spatial position holds this many capsules
        primary_dim: int = 8,
        primary_kernel: int = 9,
        primary_stride: int = 2,
        capsule_dim: int = 16,
        routing_iterations: int = 3,
        decoder: Sequence[int] = (512, 1024),
        reconstruction_weight: float = 0.0005,
    ) -> None:
        super().__init__()
        side = (image_size - conv_kernel + 1 - primary_kernel) // primary_stride + 1  # 6 in the paper
        if image_size - conv_kernel + 1 < primary_kernel or routing_iterations < 1:
            raise AuglabError(
                f"image_size {image_size}, conv_kernel {conv_kernel}, primary_kernel {primary_kernel}, "
                f"routing_iterations {routing_iterations}: no primary capsules or no routing"
            )
        self.in_channels, self.image_size = in_channels, image_size
        self.primary_dim, self.routing_iterations = primary_dim, routing_iterations
        self.reconstruction_weight = reconstruction_weight
        self.conv = nn.Conv2d(in_channels, conv_channels, conv_kernel)
        channels = primary_capsules * primary_dim
        self.primary = nn.Conv2d(conv_channels, channels, primary_kernel, primary_stride)
        # W_ij: one primary_dim -> capsule_dim map per (primary capsule i, class j); no bias (paper).
        # Small init: N votes are summed per class, and squash starts near-linear for short vectors.
        inputs = primary_capsules * side * side
        self.weight = nn.Parameter(0.01 * torch.randn(inputs, classes, capsule_dim, primary_dim))
        layers: list[nn.Module] = []
        width = classes * capsule_dim
        for units in decoder:
            layers += [nn.Linear(width, units), nn.ReLU()]
            width = units
        layers += [nn.Linear(width, in_channels * image_size * image_size), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def capsules(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> class capsules (B, classes, capsule_dim), each of length in [0, 1)."""
        h = self.primary(F.relu(self.conv(x)))  # (B, P * 8, s, s); no ReLU: squash is the nonlinearity
        batch = h.shape[0]
        # Channel c = p * 8 + d holds component d of capsule channel p; one capsule per (p, y, x).
        u = h.reshape(batch, -1, self.primary_dim, h.shape[2] * h.shape[3]).transpose(2, 3)
        u = squash(u.reshape(batch, -1, self.primary_dim))  # (B, N, 8), N = P * s * s
        return self.route(u)

    def route(self, u: torch.Tensor) -> torch.Tensor:
        """Dynamic routing (Sabour et al. procedure 1): primary capsules (B, N, 8) -> (B, K, 16)."""
        votes = torch.einsum("nkdp,bnp->bnkd", self.weight, u)  # u_hat_j|i: (B, N, K, 16)
        logits = votes.new_zeros(votes.shape[:3])  # routing logits b_ij: (B, N, K)
        for iteration in range(self.routing_iterations):
            coupling = logits.softmax(dim=2)  # each primary capsule splits its vote among the classes
            v = squash(torch.einsum("bnk,bnkd->bkd", coupling, votes))  # (B, K, 16)
            if iteration + 1 < self.routing_iterations:
                logits = logits + torch.einsum("bnkd,bkd->bnk", votes, v)  # agreement raises coupling
        return v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> capsule lengths (B, classes) in [0, 1); argmax is the prediction."""
        return self.capsules(x).norm(dim=-1)

    def reconstruct(self, v: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Capsules (B, K, D), class (B,) or None for the predicted one -> images (B, C, S, S) in (0, 1)."""
        if y is None:
            y = v.norm(dim=-1).argmax(1)
        mask = F.one_hot(y, v.shape[1]).to(v.dtype).unsqueeze(-1)  # keep only class y's capsule
        images = self.decoder((v * mask).flatten(1))
        return images.reshape(-1, self.in_channels, self.image_size, self.image_size)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, C, S, S), y (B,) int64) -> (margin + weighted reconstruction loss, lengths (B, K))."""
        v = self.capsules(x)
        lengths = v.norm(dim=-1)
        if self.reconstruction_weight == 0:
            return margin_loss(lengths, y), lengths
        # Inputs arrive normalized ((p/255 - mean) / std); min-max over the batch undoes any such
        # affine map (exactly p/255 when the batch has a 0 and a 255 pixel), matching the sigmoid.
        low, high = x.amin(), x.amax()
        target = (x - low) / (high - low).clamp_min(1e-8)
        error = (self.reconstruct(v, y) - target).square().flatten(1).sum(1).mean()  # sum over pixels
        return margin_loss(lengths, y) + self.reconstruction_weight * error, lengths


# --- registry --------------------------------------------------------------------------------

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "capsnet": CapsNet,
    # S2, LeCun et al. 1998: valid 5x5 convs 6 and 16, avg pools, dense 120-84, tanh, 32x32 input.
    "lenet5": partial(
        CNN, image_size=32, blocks=((6,), (16,)), kernel=5, padding="valid", pool="avg",
        activation="tanh", dense=(120, 84),
    ),
    # S4, the classic Kaggle digit-recognizer CNN: conv 32-32 5x5, pool, conv 64-64 3x3, pool.
    "kaggle_cnn": partial(
        CNN, blocks=((32, 32), (64, 64)), kernel=(5, 3), dropout=0.25, dense=(256,), dense_dropout=0.5
    ),
    # S0: conv32-BN-pool-dropout, conv64-BN-pool-dropout, dense 128, dropout 0.5.
    "s0_cnn": partial(CNN, batchnorm=True, dropout=0.25, dense=(128,), dense_dropout=0.5),
    # S1's "Mastery" baseline: valid conv32 3x3, max pool, dense 100.
    "mastery_cnn": partial(CNN, blocks=((32,),), padding="valid", dense=(100,)),
    # S1's small-parameter designs (~144k each: 148,074 and 142,794): the same five BN + leaky
    # ReLU convs and global average pool, filters growing with depth (fan-out) or shrinking (fan-in).
    "fan_out_cnn": partial(
        CNN, blocks=((32, 32), (64, 64), (128,)), batchnorm=True, dropout=0.2, activation="leaky_relu",
        global_pool=True, dense=(64,),
    ),
    "fan_in_cnn": partial(
        CNN, blocks=((128,), (64, 64), (32, 32)), batchnorm=True, dropout=0.2, activation="leaky_relu",
        global_pool=True, dense=(64,),
    ),
}


def build(name: str, kwargs: Mapping[str, object] | None = None) -> nn.Module:
    """The registry's model `name` built from params kwargs; bad names and keys raise AuglabError."""
    if name not in MODELS:
        raise AuglabError(f"model {name!r}: unknown; known: {', '.join(sorted(MODELS))}")
    kwargs = dict(kwargs or {})
    accepted = list(inspect.signature(MODELS[name]).parameters)
    for key in kwargs:
        if key not in accepted:
            raise AuglabError(f"model {name!r}: unknown kwarg {key!r}; accepted: {', '.join(accepted)}")
    try:
        return MODELS[name](**kwargs)
    except AuglabError as error:  # name the model in errors raised deep inside a constructor
        raise AuglabError(f"model {name!r}: {error}") from None


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (all of them; buffers such as BN running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_image(model: nn.Module) -> int:
    """Forward FLOPs of one (1, C, S, S) image, counting matmuls and convs (FlopCounterMode)."""
    parameter = next(model.parameters())
    side = model.image_size
    x = torch.zeros(1, model.in_channels, side, side, device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()  # BN on a single image must use running statistics
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()
