"""Checkpoints in one place: atomic saves, safe loads (weights_only: no code runs from a file),
resumable training state (fingerprinted against the params and data it was written for, random
states included), the model files the train stage writes and evaluation reads, and transfer of
a pretrained model's weights into a new one (finetune). What goes into a training checkpoint is
its trainer's (auglab.train, auglab.gan); how it is written, matched and read back is here.

A model file is `{name, kwargs, state_dict}` (rebuilt through the auglab.models registry) plus
what turning images into input needs; its weights are saved from the unwrapped module, on the CPU.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from auglab import AuglabError, models
from auglab.files import write_bytes_atomic
from auglab.params import Experiment
from auglab.runtime import Ranks

# What torch.load raises for a file cut short or not written by torch.save: RuntimeError (zip
# without its central directory), OSError EINVAL (zip cut inside a record, the common case),
# EOFError (empty), UnpicklingError (not a torch file at all).
UNREADABLE = (RuntimeError, OSError, EOFError, pickle.UnpicklingError)

MODEL_KEYS = ("name", "kwargs", "state_dict", "image_size", "mean", "std", "class_names", "dataset")


def first_line(error: BaseException) -> str:
    """An exception's message up to its first line break (torch's run on for paragraphs)."""
    return str(error).split("\n", 1)[0].split(". ", 1)[0]


# --- writing and reading ------------------------------------------------------------------------


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save into memory, then an atomic write: a kill never leaves a torn file, and the
    bytes do not depend on a temp file's name (torch.save names its archive after the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


def read(path: Path, expected: str, device: torch.device | str = "cpu") -> object:
    """A torch file's contents (weights_only), its tensors on `device`. A missing, torn or foreign
    file is an AuglabError naming the file and `expected` (what should be there); what the
    contents must hold, the caller checks."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise AuglabError(f"{path}: missing, {expected}") from None
    except UNREADABLE as e:
        raise AuglabError(f"{path}: unreadable, truncated or not a torch file "
                          f"({type(e).__name__}: {first_line(e)}), {expected}") from None
    return state


def cpu_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state_dict on the CPU, contiguous: what a saved file holds whatever the device."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


# --- resumable training state --------------------------------------------------------------------


def fingerprint(config: dict, data_digests: list[str], tensors: dict[str, torch.Tensor] | None = None) -> str:
    """What a checkpoint must match to be resumed: a config (as JSON types), the digests of the
    data it trains on, and any initial weights."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    digest.update(" ".join(data_digests).encode())
    for name, tensor in sorted((tensors or {}).items()):
        digest.update(name.encode())
        digest.update(tensor.cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_states(generators: dict[str, torch.Generator], global_state: bool = True) -> dict:
    """The states of named generators; with `global_state`, torch's global generators too (CPU,
    and every CUDA device's where CUDA exists), which dropout and initialization draw from."""
    states = {"torch": torch.get_rng_state()} if global_state else {}
    states.update({name: generator.get_state() for name, generator in generators.items()})
    if global_state and torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back what `rng_states` saved (the global states only where they were saved). A
    generator the checkpoint has no state for keeps its seed: the host generator that picks views
    on CUDA (train.view_generator) is newer than checkpoints written before it."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    for name, generator in generators.items():
        if name in states:
            generator.set_state(states[name])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def load_resumable(path: Path, expected: str, log: Callable[[str], None], ranks: Ranks | None = None) -> dict | None:
    """The checkpoint at `path` if it was written for the same params and data (its fingerprint
    is `expected`), else None, and the log says why. With several ranks, rank 0 reads it and
    sends it to the others (nodes need not share a disk)."""
    if ranks is not None and ranks.world > 1:
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


# --- model files ---------------------------------------------------------------------------------


def save_model(path: Path, experiment: Experiment, model: nn.Module, stats: dict, class_names: list[str]) -> None:
    """The model file evaluation reads: {name, kwargs, state_dict} plus what input needs."""
    save_atomic({"name": experiment.model, "kwargs": experiment.model_kwargs, "state_dict": cpu_weights(model),
                 "image_size": model.image_size, "mean": stats["mean"], "std": stats["std"],
                 "class_names": class_names, "dataset": experiment.dataset}, path)


def load_model(path: Path, device: torch.device) -> tuple[nn.Module, dict]:
    """Rebuild a saved model (weights_only: no code runs from the file), in eval mode. A file that
    is missing, torn, not a save_model file, or whose weights do not fit the architecture it
    names is an AuglabError naming the file."""
    expected = "expected a model.pt written by the train stage"
    state = read(path, expected)
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
