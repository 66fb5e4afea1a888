"""Stage train@<experiment> (and finetune@<name>, member@<name>): train one experiment on the device,
logging every epoch with DVCLive; write the model, then score it on the dataset's test split in the
same process (metrics, confusion rows, predictions, a gallery of misclassified images, Kaggle's
submission.csv). A killed run resumes from its checkpoint, which stays until the scores are written.
With the experiment's `nproc` > 1 the stage runs itself again under torchrun, one process per
GPU (or gloo processes on CPU); started by torchrun already (multi-node), it joins as it is.
Rank 0 alone logs, writes checkpoints and the model."""

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from dvclive import Live

from auglab import checkpoint, cli, evaluate, params, plots, preprocess, runtime, shards, train
from auglab.files import atomic_dir, write_bytes_atomic, write_json_atomic


def load_set(directory: Path, splits: list[str]) -> tuple[np.ndarray, np.ndarray]:
    parts = [shards.read_split(directory, name) for name in splits]
    return np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts])


def relaunch(nproc: int) -> None:
    """Replace this process with torchrun running this same command in `nproc` processes on this
    machine (DVC waits on the same pid and sees torchrun's exit status)."""
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc-per-node={nproc}", *sys.argv])


def main(args) -> None:
    experiment = params.load_experiment(args.params, args.group, args.experiment)
    if experiment.nproc > 1 and "LOCAL_RANK" not in os.environ:
        runtime.check_processes(experiment.device, experiment.nproc)
        relaunch(experiment.nproc)
    with runtime.processes(experiment.device) as device:
        if runtime.Ranks.current().rank == 0:
            run(args, experiment, device)
        else:
            train_data, val_data, stats, init = load(args, experiment, device)
            train.train(experiment, train_data, val_data, stats, args.checkpoint, log=lambda line: None,
                        init_state=init)


def load(args, experiment: params.Experiment, device: torch.device):
    """(train data, val data, stats, init checkpoint or None) on the device."""
    runtime.set_cpu_flags(device)
    images, labels = load_set(args.shards, experiment.train)
    if experiment.real is not None:
        real_images, real_labels = load_set(args.splits, [experiment.real])
        images, labels = np.concatenate([real_images, images]), np.concatenate([real_labels, labels])
    if experiment.bag < 1:
        images, labels = train.resample(images, labels, experiment.bag, experiment.seed)
    train_data = runtime.DeviceData.from_numpy(images, labels, device)
    val = shards.read_split(args.splits, experiment.val)
    val_data = runtime.DeviceData.from_numpy(val.images, val.labels, device)
    stats = preprocess.input_stats(json.loads(args.stats.read_text()), experiment.normalize)
    init = checkpoint.read(args.init, "expected a model.pt written by the train stage") if args.init else None
    return train_data, val_data, stats, init


def run(args, experiment: params.Experiment, device: torch.device) -> None:
    """Rank 0 (or the only process): train, log with DVCLive, write the model and its scores."""
    train_data, val_data, stats, init = load(args, experiment, device)
    world = runtime.Ranks.current().world
    cli.log(f"{args.experiment}: {experiment.model} on {len(train_data):,} images "
            f"({', '.join(experiment.train)}{' + ' + experiment.real if experiment.real else ''}), "
            f"device {device}{f' x {world} processes' if world > 1 else ''}, "
            f"autocast {runtime.autocast_dtype(device, experiment.precision)}")
    with atomic_dir(args.out) as staging:
        with Live(dir=str(staging / "live"), save_dvc_exp=False, dvcyaml=None) as live:

            def log_epoch(row: dict) -> None:
                for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s"):
                    if row[key] is not None:  # val is None on the epochs val_every skips
                        live.log_metric(key.replace("_", "/", 1) if key.startswith(("train", "val")) else key,
                                        row[key], plot=True)
                live.next_step()

            result = train.train(experiment, train_data, val_data, stats, args.checkpoint,
                                 on_epoch=log_epoch, log=cli.log, init_state=init)
            live.summary.update({"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                                 "stopped_early": result.stopped_early,
                                 "train_seconds": round(sum(r["seconds"] for r in result.history), 1)})
        class_names = shards.read_manifest(args.splits)["class_names"]
        checkpoint.save_model(staging / "model.pt", experiment, result.model, stats, class_names)
    score(args.experiment, args.out / "model.pt", args.splits, device, args.eval,
                            args.metrics, args.confusion, cli.log)
    args.checkpoint.unlink(missing_ok=True)  # finished: the next run starts fresh


def score(name: str, model_path: Path, splits: Path, device: torch.device, out: Path,
          metrics_path: Path, confusion_path: Path, log: Callable[[str], None]) -> dict:
    """Score the model.pt at `model_path` on its dataset's test split (on val where the test split
    is unlabelled, as Kaggle's) and write what a training stage outputs besides the model: `out`/
    predictions.parquet and misclassified.png (and submission.csv for the unlabelled test rows),
    the metrics JSON reviewers diff and the confusion rows DVC plots. Returns the metrics."""
    model, saved = checkpoint.load_model(model_path, device)
    class_names = saved["class_names"]
    test = shards.read_split(splits, "test")
    data_classes = shards.read_manifest(splits)["class_names"]
    evaluate.check_model(model_path, saved, data_classes, *test.images.shape[1:], splits)
    scored = test if test.labels is not None else shards.read_split(splits, "val")
    evaluate.check_labels(scored.labels, len(class_names), f"{splits}/{scored.metadata['split']}")
    found = evaluate.predict(model, scored.images, scored.labels, saved["mean"], saved["std"])
    result = {"split": scored.metadata["split"], "images": len(scored),
              **evaluate.metrics(scored.labels, found.predicted, found.loss, class_names)}
    for path in (metrics_path, confusion_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as staging:
        evaluate.write_predictions(staging / "predictions.parquet", scored.ids, scored.labels, found, class_names)
        shown = plots.gallery(staging / "misclassified.png", scored.images, scored.labels, found.predicted,
                              class_names, f"{name}: misclassified {scored.metadata['split']} images "
                              f"(true -> predicted), {result['errors']} of {len(scored):,}")
        if test.labels is None:  # Kaggle: predict the unlabelled test rows too
            unlabelled = evaluate.predict(model, test.images, None, saved["mean"], saved["std"])
            write_bytes_atomic(staging / "submission.csv", evaluate.submission(unlabelled.predicted))
        write_bytes_atomic(confusion_path, evaluate.confusion_rows(scored.labels, found.predicted, class_names))
        write_json_atomic(metrics_path, result)
    log(f"{name}: {scored.metadata['split']} accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f}, "
        f"macro F1 {result['f1']:.4f}; {shown} misclassified images in the gallery")
    return result


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--group", choices=("experiments", "finetune", "members"), default="experiments")
    parser.add_argument("--experiment", required=True, help="a key of train.<group>")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--shards", type=Path, required=True, help="shard directory of the training splits")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--init", type=Path, help="pretrained model.pt (finetune)")
    parser.add_argument("--checkpoint", type=Path, required=True, help="resumable checkpoint (scratch)")
    parser.add_argument("--out", type=Path, required=True, help="model directory to write")
    parser.add_argument("--eval", type=Path, required=True, help="directory for predictions, gallery, submission")
    parser.add_argument("--metrics", type=Path, required=True, help="test metrics JSON to write")
    parser.add_argument("--confusion", type=Path, required=True, help="confusion rows CSV to write")
    cli.run(main, parser)
