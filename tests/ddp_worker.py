"""Run by tests/test_distributed.py under torchrun (2 gloo processes on CPU): train the toy
experiment through auglab.train as the train stage does, and save what each rank ends with.

Usage: python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py OUT
Writes OUT/rank<r>.pt: {"step": state after one step, "whole": (history, state) of the whole run,
"resumed": (history, state) of the same run stopped after epoch 1 and resumed, "refused": the
error of a batch size that leaves rank 1 without images}; checkpoints go
to OUT/rank<r>/checkpoint.pt (the whole run) and OUT/shared/checkpoint.pt (the resumed run).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from auglab import AuglabError, params, runtime, train

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ROOT
from toy import digits

STATS = {"mean": 0.2, "std": 0.35}
TRAIN, VAL = 320, 200  # 10 steps of the global batch (32) per epoch


def experiment(**overrides) -> params.Experiment:
    """The toy experiment: a CNN with BatchNorm and dropout, on-the-fly rotation, fp32."""
    defaults = params.load_key(ROOT / "params.yaml", "train.defaults")
    entry = {"dataset": "toy", "shards": "split/toy", "train": ["train"], "model": "cnn",
             "model_kwargs": {"blocks": [[8], [16]], "dense": [32], "batchnorm": True, "dropout": 0.1},
             "augment": {"r": {"rotation": 10.0}}, "epochs": 2, "batch_size": 32, "precision": "fp32",
             "optimizer": {"lr": 0.0005}, "nproc": 2, **overrides}
    return params.experiment(defaults, entry, "toy")


def data(device: torch.device) -> tuple[runtime.DeviceData, runtime.DeviceData]:
    images, labels = digits(TRAIN + VAL, seed=0)
    return (runtime.DeviceData.from_numpy(images[:TRAIN], labels[:TRAIN], device),
            runtime.DeviceData.from_numpy(images[TRAIN:], labels[TRAIN:], device))


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(out: Path) -> None:
    with runtime.processes("cpu") as device:
        rank = runtime.Ranks.current().rank
        sets = data(device)
        quiet = {"log": lambda line: None}
        one_step = experiment(epochs=1, batch_size=TRAIN)  # the whole set is one global batch
        step = train.train(one_step, *sets, STATS, out / f"rank{rank}" / "step.pt", **quiet)
        whole = train.train(experiment(), *sets, STATS, out / f"rank{rank}" / "checkpoint.pt", **quiet)
        shared = out / "shared" / "checkpoint.pt"
        train.train(experiment(), *sets, STATS, shared, stop_after=1, **quiet)
        resumed = train.train(experiment(), *sets, STATS, shared, **quiet)
        try:  # the last batch of 320 in 319s holds 1 image: nothing for rank 1
            train.train(experiment(batch_size=TRAIN - 1), *sets, STATS, out / "refused.pt", **quiet)
            refused = None
        except AuglabError as e:
            refused = str(e)
        torch.save({"step": state(step.model), "whole": (whole.history, state(whole.model)),
                    "resumed": (resumed.history, state(resumed.model)), "refused": refused}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
