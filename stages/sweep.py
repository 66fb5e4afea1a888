"""Stages grid@<optimizer>, batch and regularize: S1's sweeps. Each cell trains sweeps.base (over
train.defaults) with one change, scores the official test split and writes the cell's test accuracy,
val loss, epochs to converge and time as JSON. A cell scores val after its last epoch only, unless it
stops early on val loss (regularize): the report reads the final scores.

A stage is one process for many cells (one import of torch, one load of the data), one JSON per
cell: grid@<optimizer> is one optimizer's column (every activation of sweeps.grid.activations),
batch every size of sweeps.batch_sizes, regularize every penalty of sweeps.regularization.penalties.
Changing an optimizer's lr re-runs its column only; the cells of a killed stage resume from their
checkpoints."""

import json
from pathlib import Path

from auglab import AuglabError, cli, evaluate, params, preprocess, runtime, shards, train, tune
from auglab.files import write_json_atomic


def cells(args) -> list[tuple[str, dict, dict, Path, Path]]:
    """(cell name, train entry, what the cell changed, its JSON, its checkpoint) for each cell this
    stage runs, from the params it declares."""
    base = params.load_key(args.params, "sweeps.base")
    if args.study == "grid":
        lr = params.load_key(args.params, f"sweeps.grid.lr.{args.optimizer}")
        return [(f"{activation}-{args.optimizer}", tune.grid_cell(base, activation, args.optimizer, lr),
                 {"activation": activation, "optimizer": args.optimizer, "lr": lr},
                 args.out / f"{activation}.json", args.checkpoint / f"{activation}.pt")
                for activation in params.load_key(args.params, "sweeps.grid.activations")]
    if args.study == "batch":
        return [(str(size), tune.batch_cell(base, size), {"batch_size": size},
                 args.out / f"{size}.json", args.checkpoint / f"{size}.pt")
                for size in params.load_key(args.params, "sweeps.batch_sizes")]
    study = params.load_key(args.params, "sweeps.regularization")
    return [(name, tune.regularization_cell(base, penalty, study.epochs, study.early_stopping),
             {"penalty": name, "l1": penalty.l1, "l2": penalty.l2},
             args.out / f"{name}.json", args.checkpoint / f"{name}.pt")
            for name, penalty in study.penalties.items()]


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
    for (cell, _, changed, out, checkpoint), experiment in zip(todo, runs, strict=True):
        cli.log(f"{args.study}@{cell}: {experiment.model} on {len(train_data):,} images, {changed}")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        result = train.train(experiment, train_data, val_data, stats, checkpoint, log=cli.log, val_last_only=True)
        found = evaluate.predict(result.model, test.images, test.labels, stats["mean"], stats["std"], experiment.precision)
        accuracy = float((found.predicted == test.labels).mean())
        numbers = tune.summary(result, bool(experiment.early_stopping), accuracy, found.loss)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, {"study": args.study, "cell": cell, "changed": changed, **numbers})
        cli.log(f"{args.study}@{cell}: test acc {accuracy:.4f}, val loss {numbers['val_loss']:.4f}, "
                f"{numbers['epochs_run']} epochs, {numbers['seconds_per_epoch']:.1f} s/epoch")
    # Checkpoints go once every cell is written: a column killed halfway resumes its finished cells
    # at their last epoch (no training) instead of training them again.
    for *_, checkpoint in todo:
        checkpoint.unlink(missing_ok=True)
    args.checkpoint.rmdir()


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--study", choices=("grid", "batch", "regularize"), required=True)
    parser.add_argument("--optimizer", help="grid: the column's optimizer, one of sweeps.grid.optimizers")
    parser.add_argument("--splits", type=Path, required=True, help="the base dataset's split directory")
    parser.add_argument("--shards", type=Path, required=True, help="shard directory of the base's training splits")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="scratch folder of one resumable checkpoint per cell")
    parser.add_argument("--out", type=Path, required=True, help="the folder of the stage's cell JSONs")
    cli.run(main, parser)
