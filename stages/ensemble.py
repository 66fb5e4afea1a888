"""Stage ensemble@<name>: average the test logits of several trained experiments (seeds or
resamples of one recipe), with horizontal-flip test-time augmentation where the ensemble asks for it; write the
ensemble's accuracy beside each member's, their mean and spread, its gain over the best member,
and the members' training time."""

import json
from pathlib import Path

from auglab import AuglabError, checkpoint, cli, ensemble, params, runtime, shards
from auglab.files import write_json_atomic


def main(args) -> None:
    config = params.load_key(args.params, f"ensembles.{args.name}")
    device = runtime.setup("auto")
    test = shards.read_split(args.splits, "test")
    if test.labels is None:
        raise AuglabError(f"{args.splits}: the test split is unlabelled; an ensemble is scored on labelled test images")
    members, seconds = [], {}
    for name in config.members:
        model, saved = checkpoint.load_model(args.models / name / "model.pt", device)
        if saved["dataset"] != config.dataset:
            raise AuglabError(f"ensembles.{args.name}.members: {name} was trained on {saved['dataset']!r}, "
                              f"expected {config.dataset!r}")
        members.append(ensemble.member_scores(model, test.images, test.labels, saved["mean"], saved["std"],
                                              "auto", config.flips))
        live = json.loads((args.models / name / "live/metrics.json").read_text())
        seconds[name] = live.get("train_seconds", 0.0)
    result = {"dataset": config.dataset, "flips": config.flips, **ensemble.summary(config.members, members, test.labels),
              "train_seconds": seconds, "total_train_minutes": round(sum(seconds.values()) / 60, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    cli.log(f"ensemble@{args.name}: {len(members)} models{' + flips' if config.flips else ''}: test acc "
            f"{result['accuracy']:.4f}; members {result['member_mean']:.4f} +- {result['member_std']:.4f}, "
            f"gain over the best member {result['gain_over_best_member']:+.4f}")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    parser.add_argument("--name", required=True, help="a key of ensembles")
    parser.add_argument("--splits", type=Path, required=True, help="the dataset's split directory")
    parser.add_argument("--models", type=Path, required=True, help="artifacts/models")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's metrics JSON to write")
    cli.run(main, parser)
