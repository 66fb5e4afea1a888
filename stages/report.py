"""Stage report: reports/report.md with every study's table beside the study's own numbers,
GAN quality, the augmentation sanity check, timing and figures; reports/metrics.json holds the
headline numbers `dvc metrics diff` shows."""

import json
import shutil
from pathlib import Path

import torch

from auglab import cli, evaluate, params, report, shards, train
from auglab.files import atomic_dir, temp_path, write_json_atomic


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sanity(args, builds: dict, models: dict[str, str], device: torch.device) -> list[dict]:
    """Label-preservation rate per augment build: accuracy of a real-data model on its images."""
    rows = []
    for build, experiment in models.items():
        dataset, recipe = builds[build].dataset, builds[build].recipe
        images = shards.read_split(args.augmented / dataset / recipe, recipe)
        model, saved = train.load_model(args.models / experiment / "model.pt", device)
        found = evaluate.predict(model, images.images, images.labels, saved["mean"], saved["std"])
        rows.append({"build": build, "recipe": recipe, "experiment": experiment, "images": len(images),
                     "rate": float((found.predicted == images.labels).mean())})
    return rows


def sweeps_section(args, figures: Path) -> tuple[list[str], dict]:
    """S1's grid, batch-size and regularization tables and the Optuna search: Markdown and headline."""
    sweeps = params.load_key(args.params, "sweeps")
    activations, optimizers = sweeps.grid.activations, sweeps.grid.optimizers
    grid = {(a, o): read_json(args.sweeps / "grid" / f"{a}-{o}.json") for a in activations for o in optimizers}
    batch = {size: read_json(args.sweeps / "batch" / f"{size}.json") for size in sweeps.batch_sizes}
    penalties = {name: read_json(args.sweeps / "regularize" / f"{name}.json") for name in sweeps.regularization.penalties}
    tuned = read_json(args.tune / "best.json")
    base = sweeps.base
    setting = (f"`{base['model']}` on `{', '.join(base['train'])}` of {base['dataset']} (sweeps.base over "
               f"train.defaults), scored on the official test split")
    epochs = f"{base['epochs']} epochs" if "epochs" in base else "the default epochs"
    best = report.best_cell(grid)
    report.grid_heatmap(figures / "sweep_grid.png", grid, activations, optimizers,
                        "S1 grid: test accuracy per activation x optimizer (best on val outlined)")
    report.batch_plot(figures / "sweep_batch.png", batch, "S1 batch size: seconds per epoch and val accuracy")
    shutil.copy(args.tune / "history.png", figures / "tune_history.png")
    grid_seconds = sum(c["train_seconds"] for c in grid.values())
    lines = [
        "## S1 sweeps: activation x optimizer", "",
        f"Each cell: {setting}, {epochs}. Cells read `test accuracy / val loss`; the pair with the best val accuracy",
        f"is in bold ({best[0]} + {best[1]}: val {grid[best]['val_accuracy']:.4f}, test {grid[best]['test_accuracy']:.4f}).",
        "S1 shows this table for its own runs without",
        "a headline number; its best models (S1 table above: 0.9205 final, 0.9165 fan-out) are the reference,",
        "reached with all 48,000 images and more epochs. Learning rate per optimizer: "
        + ", ".join(f"{o} {sweeps.grid.lr[o]:g}" for o in optimizers) + f". Training time of the grid: {grid_seconds:.0f} s.",
        "", report.grid_table(grid, activations, optimizers), "", "![S1 grid](figures/sweep_grid.png)", "",
        "## S1 sweeps: batch size", "", f"Each cell: {setting}, {epochs}.", "",
        report.table(["batch size", "s / epoch", "img/s", "val acc", "val loss", "test acc"],
                     [[str(size), f"{c['seconds_per_epoch']:.1f}", f"{c['img_per_s']:,}", report.number(c["val_accuracy"]),
                       report.number(c["val_loss"]), report.number(c["test_accuracy"])] for size, c in batch.items()]),
        "", "![S1 batch size](figures/sweep_batch.png)", "",
        "## S1 sweeps: regularization", "",
        f"Each cell: {setting}, up to {sweeps.regularization.epochs} epochs with early stopping after "
        f"{sweeps.regularization.early_stopping} epochs without a better val loss (the best epoch's weights are kept).",
        "Epochs to converge: the epoch of the lowest val loss.", "",
        report.table(["penalty", "L1", "L2", "test acc", "val loss", "epochs to converge", "epochs run"],
                     [[name, f"{c['changed']['l1']:g}", f"{c['changed']['l2']:g}", report.number(c["test_accuracy"]),
                       report.number(c["val_loss"]), str(c["best_epoch"]), str(c["epochs_run"])]
                      for name, c in penalties.items()]), "",
        "## Bayesian search (Optuna)", "",
        f"{tuned['sampler'].upper()} sampler, seed {tuned['seed']}, median pruner on val accuracy per epoch, over "
        f"`{tuned['experiment']}` with `tune.budget`; {tuned['trials']} trials, {tuned['completed']} completed, "
        f"{tuned['pruned']} pruned.", "",
        report.table(["run", "val acc"], [["the experiment's own values", report.number(tuned["baseline_val_accuracy"])],
                                       [f"best trial ({tuned['best_trial']})", report.number(tuned["best_val_accuracy"])]]),
        "", "Best values: " + ", ".join(f"`{k}` = {v:.6g}" if isinstance(v, float) else f"`{k}` = {v}"
                                        for k, v in tuned["best"].items()) + ". Promote them with:", "",
        f"    {tuned['promote']}", "", "![tune history](figures/tune_history.png)", ""]
    headline = {"grid_best_accuracy": grid[best]["test_accuracy"],
                "batch_val_accuracy": {str(size): c["val_accuracy"] for size, c in batch.items()},
                "regularization_accuracy": {name: c["test_accuracy"] for name, c in penalties.items()},
                "tune": {"best_val_accuracy": tuned["best_val_accuracy"],
                         "baseline_val_accuracy": tuned["baseline_val_accuracy"]}}
    return lines, headline


def headline_section(args, config) -> tuple[list[str], dict]:
    """Issue 8's table: our best single model, ensemble and Fashion-MNIST model beside the goals,
    the studies' best and the best published numbers; the speed run's time to 99 %."""
    rows, numbers = [], {}
    for label, row in config.rows.items():
        found = read_json(args.ensembles / f"{row.ensemble}.json")
        ours = found[row.value]
        spread = (f"+- {found['member_std']:.4f} ({found['member_min']:.4f} - {found['member_max']:.4f})"
                  if row.value == "member_mean" and len(found["members"]) > 1 else "-")
        rows.append([label, f"`{row.ensemble}`", report.number(ours), spread, f"{row.goal:g}",
                     "met" if ours >= row.goal else "not met", f"{row.study:g}" if row.study is not None else "-",
                     f"{row.anchor:g}", f"{found['total_train_minutes']:.1f}"])
        numbers[label] = ours
    speed = read_json(args.metrics / f"{config.speed}.json")
    trained = read_json(args.models / config.speed / "live/metrics.json")
    seconds, reached = trained.get("train_seconds", 0.0), speed["accuracy"] >= 0.99
    numbers["speed_train_seconds"], numbers["speed_accuracy"] = seconds, speed["accuracy"]
    lines = ["## Headline results", "",
             "Test accuracy on the official 10,000 test images. Single model: the mean of the ensemble's members",
             "(different seeds of one recipe), with their spread; ensemble: the members' averaged logits;",
             "Fashion-MNIST adds the logits of the mirrored image. Cost: the members' training minutes on this machine.",
             "", report.table(["row", "ensemble", "ours", "spread (std, min - max)", "goal", "goal met", "studies' best",
                               "published", "train min"], rows), "",
             f"Speed: `{config.speed}` reaches {speed['accuracy']:.4f} on MNIST test after {seconds:.1f} s of training "
             f"({trained.get('epochs_run', '?')} epochs, evaluation excluded); "
             + (f"time to 99 %: {seconds:.1f} s (goal <= {config.speed_goal:g} s, "
                f"{'met' if seconds <= config.speed_goal else 'not met'})." if reached
                else "it does not reach 99 %, so no time to 99 % is claimed."), ""]
    return lines, numbers


def main(args) -> None:
    config = params.load_report(args.report_params)
    studies, sanity_models = config.studies, config.sanity
    filters_experiment, confusions = config.filters, config.confusion
    builds = params.load_key(args.params, "augment.builds")
    gan_builds = params.load_key(args.params, "gan.score.builds")
    device = train.choose_device("auto")
    experiments = sorted({row.experiment for study in studies.values() for row in study.rows.values()}
                         | set(confusions) | {filters_experiment})
    scores = {name: read_json(args.metrics / f"{name}.json") for name in experiments}
    trained = {name: read_json(args.models / name / "live/metrics.json") for name in experiments}
    gan = {name: {**read_json(args.gan / name / "score.json"), **read_json(args.gan / name / "live/metrics.json"),
                  **read_json(args.gan / name / "samples.json")} for name in gan_builds}
    checks = sanity(args, builds, sanity_models, device)

    with atomic_dir(args.figures) as figures:
        lines = ["# auglab report", "",
                 f"Produced by `dvc repro` (stage `report`) on: {report.machine()}.",
                 "Accuracies are on each dataset's official test split (10,000 images), scored by `evaluate@<exp>`;",
                 "the studies' numbers are what they report. `dvc metrics diff` compares `reports/metrics.json`.", ""]
        headline_lines, headline_numbers = headline_section(args, config.headline)
        lines += headline_lines
        for key, study in studies.items():
            lines += [f"## {study.title}", "", f"The study reports: {study.source}.", "",
                      report.study_table(study, scores, trained), ""]
            if study.curves:
                name = f"{key}_curves.png"
                report.curves(figures / name, {label: args.models / row.experiment / "live"
                                               for label, row in study.rows.items()}, f"{study.title}: loss per epoch")
                lines += [f"![{study.title} curves](figures/{name})", ""]

        sweep_lines, sweep_headline = sweeps_section(args, figures)
        lines += sweep_lines
        lines += ["## GAN samples", "",
                  "FID: 10,000 samples vs the 10,000 real test images in the penultimate features of `extractor`",
                  "(floor: the same distance for 10,000 real train images). CAS: LeNet-5 trained on GAN samples only,",
                  "tested on the real test set, beside the same classifier trained on the real train split.", "",
                  report.table(["build", "FID", "FID floor", "extractor", "CAS", "real", "real - CAS", "kept draws",
                                "GAN s"],
                               [[b, report.number(g["fid"], 2), report.number(g["fid_real_train"], 2), f"`{g['extractor']}`",
                                 report.number(g["cas"]), report.number(g["real_accuracy"]), report.number(g["cas_gap"]),
                                 f"{g['acceptance']:.1%}", f"{g['seconds']:.0f}"] for b, g in gan.items()]), ""]
        for name in gan:
            for picture in ("grid", "losses"):
                shutil.copy(args.gan / name / f"{picture}.png", figures / f"gan_{name}_{picture}.png")
                lines += [f"![GAN {name} {picture}](figures/gan_{name}_{picture}.png)", ""]

        lines += ["## Augmentation sanity: could this augmented image be a real test image?", "",
                  "The label-preservation rate: accuracy of a model trained on real images only, on each recipe's",
                  "augmented images against their labels (S3's question, answered by a classifier).", "",
                  report.table(["build", "images", "scored by", "label-preservation rate"],
                               [[c["build"], f"{c['images']:,}", f"`{c['experiment']}`", f"{c['rate']:.4f}"]
                                for c in checks]), ""]
        for c in checks:
            dataset = builds[c["build"]].dataset
            shutil.copy(args.augmented / dataset / f"{c['recipe']}.png", figures / f"augment_{c['build']}.png")
            lines += [f"![{c['build']}](figures/augment_{c['build']}.png)", ""]

        lines += ["## Confusion matrices and misclassified images", ""]
        for name in confusions:
            class_names = train.load_model(args.models / name / "model.pt", device)[1]["class_names"]
            report.confusion(figures / f"confusion_{name}.png", args.confusion / f"{name}.csv", class_names,
                             f"{name}: test confusion matrix")
            shutil.copy(args.eval / name / "misclassified.png", figures / f"misclassified_{name}.png")
            lines += [f"![{name} confusion](figures/confusion_{name}.png)",
                      f"![{name} misclassified](figures/misclassified_{name}.png)", ""]

        model, saved = train.load_model(args.models / filters_experiment / "model.pt", device)
        test = shards.read_split(args.splits / saved["dataset"], "test")
        drawn = report.filters_and_maps(figures / "filters.png", model, test.images[0], saved["mean"], saved["std"],
                                        f"{filters_experiment}: first-layer filters (top), their maps of test image 0")
        lines += ["## First-layer filters and feature maps (S1)", "",
                  f"{drawn} filters of `{filters_experiment}` and their responses to the first test image.", "",
                  "![filters](figures/filters.png)", "",
                  "## Timing", "", "Training seconds per experiment (epochs only) and per GAN build, from DVCLive.", "",
                  report.table(["stage", "seconds"], [[f"train@{n}", f"{trained[n].get('train_seconds', 0):.1f}"]
                                                      for n in experiments]
                               + [[f"gan@{n}", f"{g['seconds']:.1f}"] for n, g in gan.items()]), ""]
        markdown = temp_path(args.report)
        markdown.write_text("\n".join(lines))
        headline = {
            "studies": {key: {row.experiment: scores[row.experiment]["accuracy"] for row in study.rows.values()}
                        for key, study in studies.items()},
            "gan": {name: {"fid": g["fid"], "cas": g["cas"], "real_accuracy": g["real_accuracy"]} for name, g in gan.items()},
            "sanity": {c["build"]: round(c["rate"], 4) for c in checks},
            "sweeps": sweep_headline,
            "headline": headline_numbers,
        }
    markdown.replace(args.report)
    write_json_atomic(args.headline, headline)
    cli.log(f"report: {args.report} with {len(studies)} study tables, {len(gan)} GAN builds, {len(checks)} sanity rows")


if __name__ == "__main__":
    parser = cli.parser(__doc__)
    for name, help_text in (("splits", "data/split"), ("augmented", "data/augmented"), ("models", "artifacts/models"),
                            ("eval", "artifacts/eval"), ("metrics", "artifacts/metrics"),
                            ("confusion", "artifacts/confusion"), ("gan", "artifacts/gan"),
                            ("sweeps", "artifacts/sweeps"), ("tune", "artifacts/tune"),
                            ("ensembles", "artifacts/ensembles"), ("report-params", "report.yaml"),
                            ("figures", "reports/figures (written)"), ("report", "reports/report.md (written)"),
                            ("headline", "reports/metrics.json (written)")):
        parser.add_argument(f"--{name}", type=Path, required=True, help=help_text)
    cli.run(main, parser)
