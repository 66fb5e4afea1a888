"""Stages grid@<activation>-<optimizer>, batch@<size> and regularize@<penalty>: S1's sweeps. Each
trains sweeps.base (over train.defaults) with one change, scores the official test split and
writes the cell's test accuracy, val loss, epochs to converge and time as JSON."""

import json
from pathlib import Path

from auglab import AuglabError, cli, evaluate, params, preprocess, runtime, shards, train, tune
from auglab.files import write_json_atomic


def cell_entry(args) -> tuple[str, dict, dict]:
    """(cell name, train entry, what the cell changed) from the params this stage declares."""
    base = params.load_key(args.params, "sweeps.base")
    if args.study == "grid":
        lr = params.load_key(args.params, f"sweeps.grid.lr.{args.optimizer}")
        changed = {"activation": args.activation, "optimizer": args.optimizer, "lr": lr}
        return f"{args.activation}-{args.optimizer}", tune.grid_cell(base, args.activation, args.optimizer, lr), changed
    if args.study == "batch":
        return str(args.batch_size), tune.batch_cell(base, args.batch_size), {"batch_size": args.batch_size}
    penalty = params.load_key(args.params, f"sweeps.regularization.penalties.{args.penalty}")
    epochs = params.load_key(args.params, "sweeps.regularization.epochs")
    patience = params.load_key(args.params, "sweeps.regularization.early_stopping")
    changed = {"penalty": args.penalty, "l1": penalty.l1, "l2": penalty.l2}
    return args.penalty, tune.regularization_cell(base, penalty, epochs, patience), changed


def main(args) -> None:
    cell, entry, changed = cell_entry(args)
    experiment = params.experiment(params.load_key(args.params, "train.defaults"), entry, f"sweeps.{args.study}[{cell}]")
    device = runtime.setup(experiment.device)
    train_data, val_data = tune.device_data(experiment, args.shards, args.splits, device)
    stats = preprocess.input_stats(json.loads(args.stats.read_text()), experiment.normalize)
    cli.log(f"{args.study}@{cell}: {experiment.model} on {len(train_data):,} images, {changed}")
    result = train.train(experiment, train_data, val_data, stats, args.checkpoint, log=cli.log)
    test = shards.read_split(args.splits, "test")
    if test.labels is None:
        raise AuglabError(f"{args.splits}: the test split is unlabelled; sweeps need a labelled test split")
    found = evaluate.predict(result.model, test.images, test.labels, stats["mean"], stats["std"], experiment.precision)
    accuracy = float((found.predicted == test.labels).mean())
    numbers = tune.summary(result, bool(experiment.early_stopping), accuracy, found.loss)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {"study": args.study, "cell": cell, "changed": changed, **numbers})
    args.checkpoint.unlink(missing_ok=True)
    cli.log(f"{args.study}@{cell}: test acc {accuracy:.4f}, val loss {numbers['val_loss']:.4f}, "
            f"{numbers['epochs_run']} epochs, {numbers['seconds_per_epoch']:.1f} s/epoch")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--study", choices=("grid", "batch", "regularize"), required=True)
    parser.add_argument("--activation", help="grid: a key of auglab.models.ACTIVATIONS")
    parser.add_argument("--optimizer", help="grid: an optimizer name of sweeps.grid.optimizers")
    parser.add_argument("--batch-size", type=int, help="batch: images per step")
    parser.add_argument("--penalty", help="regularize: a key of sweeps.regularization.penalties")
    parser.add_argument("--splits", type=Path, required=True, help="the base dataset's split directory")
    parser.add_argument("--shards", type=Path, required=True, help="shard directory of the base's training splits")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--checkpoint", type=Path, required=True, help="resumable checkpoint (scratch)")
    parser.add_argument("--out", type=Path, required=True, help="the cell's JSON to write")
    cli.run(main, parser)
