"""Stages grid, batch and regularize: S1's sweeps. Each cell trains sweeps.base (over
train.defaults) with one change, scores the official test split and writes the cell's test accuracy,
val loss, epochs to converge and time as JSON. A cell scores val after its last epoch only, unless it
stops early on val loss (regularize): the report reads the final scores.

A stage is one process for a whole study (one import of torch, one load of the data), one JSON per
cell: grid every optimizer x activation of sweeps.grid, batch every size of sweeps.batch_sizes,
regularize every penalty of sweeps.regularization.penalties. Each JSON records a fingerprint of what
made it (the cell's resolved params, the train, val and test data, the statistics, this script and
the auglab modules it imports); a cell whose JSON is already there with the same fingerprint is
kept, not trained again. grid's folder persists between runs (dvc.yaml), so changing one
optimizer's lr trains that optimizer's cells only, and a new activation only its own; the JSONs of
cells no longer in params go. The cells of a killed stage resume from their checkpoints."""

import hashlib
import json
import sys
from pathlib import Path

from auglab import AuglabError, cli, evaluate, params, preprocess, runtime, shards, train, tune
from auglab.files import write_json_atomic


def cells(args) -> list[tuple[str, dict, dict, Path, Path]]:
    """(cell name, train entry, what the cell changed, its JSON, its checkpoint) for each cell this
    stage runs, from the params it declares."""
    base = params.load_key(args.params, "sweeps.base")
    if args.study == "grid":
        grid = params.load_key(args.params, "sweeps.grid")
        return [(f"{activation}-{optimizer}", tune.grid_cell(base, activation, optimizer, grid.lr[optimizer]),
                 {"activation": activation, "optimizer": optimizer, "lr": grid.lr[optimizer]},
                 args.out / optimizer / f"{activation}.json", args.checkpoint / f"{activation}-{optimizer}.pt")
                for optimizer in grid.optimizers for activation in grid.activations]
    if args.study == "batch":
        return [(str(size), tune.batch_cell(base, size), {"batch_size": size},
                 args.out / f"{size}.json", args.checkpoint / f"{size}.pt")
                for size in params.load_key(args.params, "sweeps.batch_sizes")]
    study = params.load_key(args.params, "sweeps.regularization")
    return [(name, tune.regularization_cell(base, penalty, study.epochs, study.early_stopping),
             {"penalty": name, "l1": penalty.l1, "l2": penalty.l2},
             args.out / f"{name}.json", args.checkpoint / f"{name}.pt")
            for name, penalty in study.penalties.items()]


def code_digest() -> str:
    """sha256 of this script and the auglab modules this process imported (all at the top: none is
    imported later): the code a kept cell was trained by. Other modules (report.py) do not count."""
    modules = [Path(module.__file__) for name, module in sys.modules.items()
               if name.split(".")[0] == "auglab" and getattr(module, "__file__", None)]
    digest = hashlib.sha256()
    for path in [Path(__file__), *sorted(modules)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def kept(out: Path, fingerprint: str) -> bool:
    """Whether the cell's JSON is already there, written from the same fingerprint."""
    try:
        return json.loads(out.read_text()).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        return False


def prune(folder: Path, wanted: set[Path]) -> None:
    """Remove the JSONs under `folder` of cells no longer in params, and folders left empty."""
    for path in sorted(folder.rglob("*.json")):
        if path not in wanted:
            path.unlink()
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


def main(args) -> None:
    todo = cells(args)
    defaults = params.load_key(args.params, "train.defaults")
    runs = [params.experiment(defaults, entry, f"sweeps.{args.study}[{cell}]") for cell, entry, *_ in todo]
    device = runtime.setup(runs[0].device)
    train_data, val_data = tune.device_data(runs[0], args.shards, args.splits, device)  # a cell changes no data key
    stats = preprocess.input_stats(json.loads(args.stats.read_text()), runs[0].normalize)
    test = shards.read_split(args.splits, "test")
    if test.labels is None:
        raise AuglabError(f"{args.splits}: the test split is unlabelled; sweeps need a labelled test split")
    if args.out.is_dir():
        prune(args.out, {out for _, _, _, out, _ in todo})
    inputs = [hashlib.sha256(test.images.tobytes() + test.labels.tobytes()).hexdigest(),
              json.dumps(stats, sort_keys=True), code_digest()]
    for (cell, _, changed, out, checkpoint), experiment in zip(todo, runs, strict=True):
        fingerprint = hashlib.sha256(json.dumps(
            [train.resume_fingerprint(experiment, train_data, val_data, None), *inputs]).encode()).hexdigest()
        if kept(out, fingerprint):
            cli.log(f"{args.study}@{cell}: kept (its params, data and code are those it was trained with)")
            continue
        cli.log(f"{args.study}@{cell}: {experiment.model} on {len(train_data):,} images, {changed}")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        result = train.train(experiment, train_data, val_data, stats, checkpoint, log=cli.log, val_last_only=True)
        found = evaluate.predict(result.model, test.images, test.labels, stats["mean"], stats["std"], experiment.precision)
        accuracy = float((found.predicted == test.labels).mean())
        numbers = tune.summary(result, bool(experiment.early_stopping), accuracy, found.loss)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, {"study": args.study, "cell": cell, "changed": changed, **numbers,
                                "fingerprint": fingerprint})
        cli.log(f"{args.study}@{cell}: test acc {accuracy:.4f}, val loss {numbers['val_loss']:.4f}, "
                f"{numbers['epochs_run']} epochs, {numbers['seconds_per_epoch']:.1f} s/epoch")
    # Checkpoints go once every cell is written: a stage killed halfway resumes its finished cells
    # at their last epoch (no training) instead of training them again.
    for *_, checkpoint in todo:
        checkpoint.unlink(missing_ok=True)
    if args.checkpoint.is_dir():
        args.checkpoint.rmdir()


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--study", choices=("grid", "batch", "regularize"), required=True)
    parser.add_argument("--splits", type=Path, required=True, help="the base dataset's split directory")
    parser.add_argument("--shards", type=Path, required=True, help="shard directory of the base's training splits")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="scratch folder of one resumable checkpoint per cell")
    parser.add_argument("--out", type=Path, required=True, help="the folder of the stage's cell JSONs")
    cli.run(main, parser)
