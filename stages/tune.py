"""Stage tune: an Optuna study (seeded TPE or random sampler, median pruner on val accuracy per
epoch) over the keys tune.space names of one train experiment, each trial on tune.budget (a
subset, fewer epochs). The experiment's own values run first as the baseline. Writes the trial
history (CSV and plot) and the best values with the `dvc exp run -S` line that promotes them.

The study lives on tune.storage (default: a scratch journal beside --checkpoint, removed when the
stage finishes, so a killed stage resumes its study and a finished one starts afresh). Other
processes, on this machine or others sharing the storage, join it with the same command and
`--worker`: they run trials and write nothing else. The stage writes its outputs from the study
once every trial, whoever ran it, is done, with a copy of the study as the journal --study."""

import json
import os
from pathlib import Path

from auglab import cli, params, plots, preprocess, runtime, train, tune
from auglab.files import write_bytes_atomic, write_json_atomic


def main(args) -> None:
    config = params.load_key(args.params, "tune")
    defaults = params.load_key(args.params, "train.defaults")
    entry = params.deep_merge(params.load_key(args.params, f"train.experiments.{config.experiment}"), config.budget)
    where = f"train.experiments.{config.experiment} with tune.budget"
    experiment = params.experiment(defaults, entry, where)
    for key in ("dataset", "shards"):
        if getattr(experiment, key) != getattr(config, key):
            raise params.ParamsError(f"tune.{key}: expected {getattr(experiment, key)!r} as in {where}, "
                                     f"got {getattr(config, key)!r}")
    device = runtime.setup(experiment.device)
    train_data, val_data = tune.device_data(experiment, args.shards, args.splits, device)
    stats = preprocess.input_stats(json.loads(args.stats.read_text()), experiment.normalize)
    # a worker's trials get their own scratch file: workers may share this machine
    checkpoint = args.checkpoint.with_suffix(f".{os.getpid()}.pt") if args.worker else args.checkpoint

    def fit(values: dict, report=lambda epoch, value: None) -> float:
        run = params.experiment(defaults, tune.with_keys(entry, values), f"{where} and {values}")
        checkpoint.unlink(missing_ok=True)  # trials never resume one another
        try:
            result = train.train(run, train_data, val_data, stats, checkpoint,
                                 on_epoch=lambda row: report(row["epoch"], row["val_acc"]), log=lambda line: None)
        finally:
            checkpoint.unlink(missing_ok=True)
        return result.history[-1]["val_acc"]

    location = config.storage or str(args.checkpoint.with_suffix(".journal"))
    storage = tune.storage(location)
    name = tune.study_name(config, defaults, entry)
    study = tune.make_study(config, name, storage)
    cli.log(f"tune{' worker' if args.worker else ''}: study {name} on {location}, "
            f"{config.trials} {config.sampler} trials on {config.experiment} "
            f"({len(train_data):,} images, {experiment.epochs} epochs each), seed {config.seed}")
    if args.worker:
        tune.search(config, fit, log=cli.log, study=study)
        ran = sum(t.user_attrs.get("worker") == tune.worker_id() for t in study.get_trials(deepcopy=False))
        cli.log(f"tune worker: {ran} trial(s) run here; the stage writes the results")
        return
    tune.fail_abandoned(study, cli.log)  # trials a killed run of this stage left running
    if "baseline" not in study.user_attrs:  # a resumed study keeps the baseline it measured
        study.set_user_attr("baseline", fit({}))
    baseline = study.user_attrs["baseline"]
    cli.log(f"tune: the experiment's own values reach val acc {baseline:.4f}")
    tune.search(config, fit, log=cli.log, study=study)
    tune.wait_for_trials(study, config.trials, cli.log)
    number, value, values = tune.best(study, config.space)
    rows = tune.trial_rows(study, config.space)
    states = [r["state"] for r in rows]
    for path in (args.trials, args.history, args.best):
        path.parent.mkdir(parents=True, exist_ok=True)
    plots.history_plot(args.history, rows, baseline, f"tune: {config.sampler} search on {config.experiment}, "
                      f"val accuracy per trial (seed {config.seed})")
    write_bytes_atomic(args.trials, tune.rows_csv(rows))
    write_json_atomic(args.best, {
        "experiment": config.experiment, "sampler": config.sampler, "seed": config.seed,
        "trials": len(rows), "completed": states.count("complete"), "pruned": states.count("pruned"),
        "baseline_val_accuracy": baseline, "best_val_accuracy": value, "best_trial": number,
        "beats_baseline": value > baseline, "best": values,
        "promote": tune.promote_command(config.experiment, values),
    })
    tune.snapshot(name, storage, args.study)
    if config.storage is None:  # finished: the next run starts a fresh study
        Path(location).unlink()
    cli.log(f"tune: best val acc {value:.4f} (trial {number}) vs {baseline:.4f} for the experiment's values; "
            f"{states.count('pruned')} of {len(rows)} trials pruned")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--splits", type=Path, required=True, help="the experiment's split directory")
    parser.add_argument("--shards", type=Path, required=True, help="shard directory of the experiment's training splits")
    parser.add_argument("--stats", type=Path, required=True, help="normalization statistics JSON")
    parser.add_argument("--checkpoint", type=Path, required=True, help="scratch checkpoint of the running trial")
    parser.add_argument("--trials", type=Path, required=True, help="trial history CSV to write")
    parser.add_argument("--history", type=Path, required=True, help="trial history plot (PNG) to write")
    parser.add_argument("--best", type=Path, required=True, help="best values JSON (metrics) to write")
    parser.add_argument("--study", type=Path, required=True,
                        help="Optuna journal file to write: a copy of the study")
    parser.add_argument("--worker", action="store_true",
                        help="join the study and run trials only; the stage run writes the outputs")
    cli.run(main, parser)
