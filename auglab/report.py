"""The report: one table per study (our test numbers beside the study's own), the headline
results, S1's sweeps and the Optuna search, GAN quality, augmentation sanity, confusion matrices,
first-layer filters and timing. `build` reads the stages' outputs, draws the figures
(auglab/report_figures.py) and returns the Markdown lines and the numbers `dvc metrics diff`
compares; stages/report.py only writes them.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from auglab import checkpoint, evaluate, report_figures, runtime, shards
from auglab.schema import Build, Headline, ReportConfig, ScoreBuild, Study, SweepsSection

FULL_COLUMNS = ("accuracy", "loss", "precision", "recall", "f1")
SANITY_IMAGES = 10_000  # images scored per augment build: the rate's standard error stays under 0.005


@dataclass(frozen=True)
class Inputs:
    """The folders the report reads: the outputs of every stage before it."""

    splits: Path  # data/split
    augmented: Path  # data/augmented
    models: Path  # artifacts/models
    eval: Path  # artifacts/eval
    metrics: Path  # artifacts/metrics
    confusion: Path  # artifacts/confusion
    gan: Path  # artifacts/gan
    sweeps: Path  # artifacts/sweeps
    tune: Path  # artifacts/tune
    ensembles: Path  # artifacts/ensembles


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ours: float, reported: float | None, images: int) -> str:
    """*reproduced* when our test accuracy lies inside the 95 % binomial interval of the study's
    number on a test set of `images` (normal approximation), else *better* or *below*."""
    if reported is None:
        return "-"
    half_width = 1.96 * math.sqrt(reported * (1 - reported) / images)
    if abs(ours - reported) <= half_width:
        return "reproduced"
    return "better" if ours > reported else "below"


def study_table(study: Study, scores: dict[str, dict], train: dict[str, dict]) -> str:
    """Rows: label, experiment, our test metrics, the study's number, our difference to it and
    the verdict (with the row's reason when it is below)."""
    rows = []
    for label, row in study.rows.items():
        ours = scores[row.experiment]
        gap = "" if row.reported is None else f"{ours['accuracy'] - row.reported:+.4f}"
        judged = verdict(ours["accuracy"], row.reported, ours["images"])
        if judged == "below" and row.why:
            judged = f"below: {row.why}"
        rows.append([label, f"`{row.experiment}`", *(number(ours[key]) for key in FULL_COLUMNS),
                     f"{train[row.experiment].get('train_seconds', 0):.0f}",
                     f"{row.reported:g}" if row.reported is not None else "not reported", gap or "-", judged])
    return table(["row", "experiment", "test acc", "test loss", "precision", "recall", "F1", "train s",
                  "study", "ours - study", "verdict"], rows)


def machine() -> str:
    """The host in one line, with the CPU's vector capability: `precision: auto` trains in bf16
    only where the CPU has native bf16 (AVX-512 bf16), else in fp32, which moves the numbers."""
    threads = torch.get_num_threads()
    native = runtime.autocast_dtype(torch.device("cpu"), "auto") is torch.bfloat16  # the one place that decides
    bf16 = "native bf16" if native else "no native bf16, so auto = fp32"
    return (f"{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, {bf16}), "
            f"{threads} torch threads, Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


# --- S1's sweeps and the Optuna search --------------------------------------------------------


def best_cell(cells: dict[tuple[str, str], dict]) -> tuple[str, str]:
    """The (activation, optimizer) pair with the highest val accuracy (lower val loss breaks ties):
    chosen on val, so its test accuracy is an honest estimate."""
    return max(cells, key=lambda pair: (cells[pair]["val_accuracy"], -cells[pair]["val_loss"]))


def grid_table(cells: dict[tuple[str, str], dict], activations: list[str], optimizers: list[str]) -> str:
    """S1's shape: one row per activation, one column per optimizer, `test acc / val loss`; the best
    pair on val in bold."""
    best = best_cell(cells)
    rows = []
    for activation in activations:
        row = [activation]
        for optimizer in optimizers:
            cell = cells[activation, optimizer]
            text = f"{cell['test_accuracy']:.4f} / {cell['val_loss']:.3f}"
            row.append(f"**{text}**" if (activation, optimizer) == best else text)
        rows.append(row)
    return table(["activation \\ optimizer", *optimizers], rows)



def sweeps_section(inputs: Inputs, sweeps: SweepsSection, figures: Path) -> tuple[list[str], dict]:
    """S1's grid, batch-size and regularization tables and the Optuna search: Markdown and headline."""
    activations, optimizers = sweeps.grid.activations, sweeps.grid.optimizers
    grid = {(a, o): read_json(inputs.sweeps / "grid" / o / f"{a}.json") for a in activations for o in optimizers}
    batch = {size: read_json(inputs.sweeps / "batch" / f"{size}.json") for size in sweeps.batch_sizes}
    penalties = {name: read_json(inputs.sweeps / "regularize" / f"{name}.json")
                 for name in sweeps.regularization.penalties}
    tuned = read_json(inputs.tune / "best.json")
    base = sweeps.base
    setting = (f"`{base['model']}` on `{', '.join(base['train'])}` of {base['dataset']} (sweeps.base over "
               f"train.defaults), scored on the official test split")
    epochs = f"{base['epochs']} epochs" if "epochs" in base else "the default epochs"
    best = best_cell(grid)
    report_figures.grid_heatmap(figures / "sweep_grid.png", grid, activations, optimizers, best,
                                "S1 grid: test accuracy per activation x optimizer (best on val outlined)")
    report_figures.batch_plot(figures / "sweep_batch.png", batch, "S1 batch size: seconds per epoch and val accuracy")
    shutil.copy(inputs.tune / "history.png", figures / "tune_history.png")
    grid_seconds = sum(c["train_seconds"] for c in grid.values())
    lines = [
        "## S1 sweeps: activation x optimizer", "",
        f"Each cell: {setting}, {epochs}. Cells read `test accuracy / val loss`; the pair with the best val accuracy",
        (f"is in bold ({best[0]} + {best[1]}: val {grid[best]['val_accuracy']:.4f}, "
         f"test {grid[best]['test_accuracy']:.4f})."),
        "S1 shows this table for its own runs without",
        "a headline number; its best models (S1 table above: 0.9205 final, 0.9165 fan-out) are the reference,",
        ("reached with all 48,000 images and more epochs. Learning rate per optimizer: "
         + ", ".join(f"{o} {sweeps.grid.lr[o]:g}" for o in optimizers)
         + f". Training time of the grid: {grid_seconds:.0f} s."),
        "", grid_table(grid, activations, optimizers), "", "![S1 grid](figures/sweep_grid.png)", "",
        "## S1 sweeps: batch size", "", f"Each cell: {setting}, {epochs}.", "",
        table(["batch size", "s / epoch", "img/s", "val acc", "val loss", "test acc"],
              [[str(size), f"{c['seconds_per_epoch']:.1f}", f"{c['img_per_s']:,}", number(c["val_accuracy"]),
                number(c["val_loss"]), number(c["test_accuracy"])] for size, c in batch.items()]),
        "", "![S1 batch size](figures/sweep_batch.png)", "",
        "## S1 sweeps: regularization", "",
        (f"Each cell: {setting}, up to {sweeps.regularization.epochs} epochs with early stopping after "
         f"{sweeps.regularization.early_stopping} epochs without a better val loss (the best epoch's weights are kept)."),
        "Epochs to converge: the epoch of the lowest val loss.", "",
        table(["penalty", "L1", "L2", "test acc", "val loss", "epochs to converge", "epochs run"],
              [[name, f"{c['changed']['l1']:g}", f"{c['changed']['l2']:g}", number(c["test_accuracy"]),
                number(c["val_loss"]), str(c["best_epoch"]), str(c["epochs_run"])]
               for name, c in penalties.items()]), "",
        "## Bayesian search (Optuna)", "",
        (f"{tuned['sampler'].upper()} sampler, seed {tuned['seed']}, median pruner on val accuracy per epoch, over "
         f"`{tuned['experiment']}` with `tune.budget`; {tuned['trials']} trials, {tuned['completed']} completed, "
         f"{tuned['pruned']} pruned."), "",
        table(["run", "val acc"], [["the experiment's own values", number(tuned["baseline_val_accuracy"])],
                                   [f"best trial ({tuned['best_trial']})", number(tuned["best_val_accuracy"])]]),
        "", ("Best values: " + ", ".join(f"`{k}` = {v:.6g}" if isinstance(v, float) else f"`{k}` = {v}"
                                         for k, v in tuned["best"].items()) + ". Promote them with:"), "",
        f"    {tuned['promote']}", "", "![tune history](figures/tune_history.png)", ""]
    headline = {"grid_best_accuracy": grid[best]["test_accuracy"],
                "batch_val_accuracy": {str(size): c["val_accuracy"] for size, c in batch.items()},
                "regularization_accuracy": {name: c["test_accuracy"] for name, c in penalties.items()},
                "tune": {"best_val_accuracy": tuned["best_val_accuracy"],
                         "baseline_val_accuracy": tuned["baseline_val_accuracy"]}}
    return lines, headline


# --- the document ------------------------------------------------------------------------------


def cost_section(inputs: Inputs, ensembles: list[str], figures: Path) -> list[str]:
    """Per headline ensemble: each member's test accuracy, the ensemble's gain over the best one,
    and a figure of the members' val accuracy against minutes of training (what more time buys)."""
    lines = ["### Members and cost curves", ""]
    for name in ensembles:
        found = read_json(inputs.ensembles / f"{name}.json")
        members = ", ".join(f"`{member}` {accuracy:.4f}" for member, accuracy in found["members"].items())
        lines.append(f"- `{name}` ({found['dataset']}): members {members}; ensemble {found['accuracy']:.4f}, "
                     f"{found['gain_over_best_member']:+.4f} over the best member.")
        report_figures.cost_curves(figures / f"cost_{name}.png",
                                   {member: inputs.models / member / "live" for member in found["members"]},
                                   f"{name}: val accuracy against minutes of training")
    return lines + [""] + [f"![{name} cost curves](figures/cost_{name}.png)" for name in ensembles] + [""]


def headline_section(inputs: Inputs, config: Headline, figures: Path) -> tuple[list[str], dict]:
    """Issue 8's table: our best single model, ensemble and Fashion-MNIST model beside the goals,
    the studies' best and the best published numbers; the speed run's time to 99 %; the members
    and their cost curves."""
    rows, numbers = [], {}
    for label, row in config.rows.items():
        found = read_json(inputs.ensembles / f"{row.ensemble}.json")
        ours = found[row.value]
        spread = (f"+- {found['member_std']:.4f} ({found['member_min']:.4f} - {found['member_max']:.4f})"
                  if row.value == "member_mean" and len(found["members"]) > 1 else "-")
        rows.append([label, f"`{row.ensemble}`", number(ours), spread, f"{row.goal:g}",
                     "met" if ours >= row.goal else "not met", f"{row.study:g}" if row.study is not None else "-",
                     f"{row.anchor:g}", f"{found['total_train_minutes']:.1f}"])
        numbers[label] = ours
    speed = read_json(inputs.metrics / f"{config.speed}.json")
    trained = read_json(inputs.models / config.speed / "live/metrics.json")
    seconds, reached = trained.get("train_seconds", 0.0), speed["accuracy"] >= 0.99
    numbers["speed_train_seconds"], numbers["speed_accuracy"] = seconds, speed["accuracy"]
    lines = ["## Headline results", "",
             "Test accuracy on the official 10,000 test images. Single model: the mean of the ensemble's members",
             "(seeds, and resamples where bagged, of one recipe), with their spread; ensemble: the members' averaged logits;",
             "Fashion-MNIST adds the logits of the mirrored image. Cost: the members' training minutes on this machine.",
             "", table(["row", "ensemble", "ours", "spread (std, min - max)", "goal", "goal met", "studies' best",
                        "published", "train min"], rows), "",
             f"Speed: `{config.speed}` reaches {speed['accuracy']:.4f} on MNIST test after {seconds:.1f} s of training "
             f"({trained.get('epochs_run', '?')} epochs, evaluation excluded); "
             + (f"time to 99 %: {seconds:.1f} s (goal <= {config.speed_goal:g} s, "
                f"{'met' if seconds <= config.speed_goal else 'not met'})." if reached
                else "it does not reach 99 %, so no time to 99 % is claimed."), ""]
    lines += cost_section(inputs, list(dict.fromkeys(row.ensemble for row in config.rows.values())), figures)
    return lines, numbers


def studies_section(inputs: Inputs, studies: dict[str, Study], scores: dict[str, dict], trained: dict[str, dict],
                    figures: Path) -> list[str]:
    """One table per study, and the loss curves of the studies that ask for them."""
    lines = []
    for key, study in studies.items():
        lines += [f"## {study.title}", "", f"The study reports: {study.source}.", "",
                  study_table(study, scores, trained), ""]
        if study.curves:
            name = f"{key}_curves.png"
            report_figures.curves(figures / name, {label: inputs.models / row.experiment / "live"
                                                   for label, row in study.rows.items()}, f"{study.title}: loss per epoch")
            lines += [f"![{study.title} curves](figures/{name})", ""]
    return lines


def gan_section(inputs: Inputs, gan: dict[str, dict], figures: Path) -> list[str]:
    """FID and CAS per GAN build, with each build's sample grid and loss curves."""
    fid_images = sorted({g["fid_images"] for g in gan.values()})
    images = " / ".join(f"{n:,}" for n in fid_images)
    lines = ["## GAN samples", "",
             f"FID: {images} samples vs as many real test images in the penultimate features of `extractor`",
             "(floor: the same distance for as many real train images). CAS: LeNet-5 trained on GAN samples only,",
             "tested on the real test set, beside the same classifier trained on the real split",
             "`gan.score.builds.<build>.real` (the GAN set has its class counts).",
             "z: the noise scale the samples were drawn at (`z_scale`).", "",
             table(["build", "FID", "FID floor", "extractor", "CAS", "real", "real - CAS", "z", "kept draws",
                    "GAN steps", "GAN s"],
                   [[b, number(g["fid"], 2), number(g["fid_real_train"], 2), f"`{g['extractor']}`",
                     number(g["cas"]), number(g["real_accuracy"]), number(g["cas_gap"]), f"{g.get('z_scale', 1.0):g}",
                     f"{g['acceptance']:.1%}", f"{g['steps']:,}", f"{g['seconds']:.0f}"] for b, g in gan.items()]), ""]
    for name in gan:
        for picture in ("grid", "losses"):
            shutil.copy(inputs.gan / name / f"{picture}.png", figures / f"gan_{name}_{picture}.png")
            lines += [f"![GAN {name} {picture}](figures/gan_{name}_{picture}.png)", ""]
    return lines


def sample_rows(count: int, limit: int = SANITY_IMAGES) -> np.ndarray:
    """Rows to score out of `count`: all of them, or a seeded sample of `limit` in row order (the
    same rows every run)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, limit, replace=False))


def sanity(inputs: Inputs, builds: dict[str, Build], models: dict[str, str], device: torch.device) -> list[dict]:
    """Label-preservation rate per augment build: accuracy of a real-data model on its images (on a
    seeded sample of SANITY_IMAGES of them: S1's 144,000 copies took most of the report's time)."""
    rows = []
    for build, experiment in models.items():
        dataset, recipe = builds[build].dataset, builds[build].recipe
        images = shards.read_split(inputs.augmented / dataset / recipe, recipe)
        chosen = sample_rows(len(images))
        labels = images.labels[chosen]
        model, saved = checkpoint.load_model(inputs.models / experiment / "model.pt", device)
        found = evaluate.predict(model, images.images[chosen], labels, saved["mean"], saved["std"])
        rows.append({"build": build, "recipe": recipe, "experiment": experiment, "images": len(images),
                     "scored": len(chosen), "rate": float((found.predicted == labels).mean())})
    return rows


def sanity_section(inputs: Inputs, checks: list[dict], builds: dict[str, Build], figures: Path) -> list[str]:
    """The label-preservation table and each build's grid of augmented images."""
    lines = ["## Augmentation sanity: could this augmented image be a real test image?", "",
             "The label-preservation rate: accuracy of a model trained on real images only, on each recipe's",
             "augmented images against their labels (S3's question, answered by a classifier).", "",
             table(["build", "images scored", "scored by", "label-preservation rate"],
                   [[c["build"], f"{c['scored']:,}" + (f" of {c['images']:,}" if c["scored"] < c["images"] else ""),
                     f"`{c['experiment']}`", f"{c['rate']:.4f}"] for c in checks]), ""]
    for c in checks:
        dataset = builds[c["build"]].dataset
        shutil.copy(inputs.augmented / dataset / f"{c['recipe']}.png", figures / f"augment_{c['build']}.png")
        lines += [f"![{c['build']}](figures/augment_{c['build']}.png)", ""]
    return lines


def confusion_section(inputs: Inputs, names: list[str], device: torch.device, figures: Path) -> list[str]:
    """Each listed experiment's test confusion matrix and its misclassified images."""
    lines = ["## Confusion matrices and misclassified images", ""]
    for name in names:
        class_names = checkpoint.load_model(inputs.models / name / "model.pt", device)[1]["class_names"]
        report_figures.confusion(figures / f"confusion_{name}.png", inputs.confusion / f"{name}.csv", class_names,
                                 f"{name}: test confusion matrix")
        shutil.copy(inputs.eval / name / "misclassified.png", figures / f"misclassified_{name}.png")
        lines += [f"![{name} confusion](figures/confusion_{name}.png)",
                  f"![{name} misclassified](figures/misclassified_{name}.png)", ""]
    return lines


def filters_section(inputs: Inputs, experiment: str, device: torch.device, figures: Path) -> list[str]:
    """The first convolution's filters of one experiment and their maps of the first test image."""
    model, saved = checkpoint.load_model(inputs.models / experiment / "model.pt", device)
    test = shards.read_split(inputs.splits / saved["dataset"], "test")
    drawn = report_figures.filters_and_maps(figures / "filters.png", model, test.images[0], saved["mean"], saved["std"],
                                            f"{experiment}: first-layer filters (top), their maps of test image 0")
    return ["## First-layer filters and feature maps (S1)", "",
            f"{drawn} filters of `{experiment}` and their responses to the first test image.", "",
            "![filters](figures/filters.png)", ""]


def build(inputs: Inputs, config: ReportConfig, builds: dict[str, Build], gan_builds: dict[str, ScoreBuild],
          sweeps: SweepsSection, figures: Path) -> tuple[list[str], dict]:
    """The whole report: its Markdown lines, and the numbers reports/metrics.json holds; figures
    are drawn into `figures` (the linked `figures/` folder beside the Markdown)."""
    device = runtime.choose_device("auto")
    experiments = sorted({row.experiment for study in config.studies.values() for row in study.rows.values()}
                         | set(config.confusion) | {config.filters})
    scores = {name: read_json(inputs.metrics / f"{name}.json") for name in experiments}
    trained = {name: read_json(inputs.models / name / "live/metrics.json") for name in experiments}
    gan = {name: {**read_json(inputs.gan / name / "score.json"), **read_json(inputs.gan / name / "live/metrics.json"),
                  **read_json(inputs.gan / name / "samples.json")} for name in gan_builds}
    checks = sanity(inputs, builds, config.sanity, device)

    lines = ["# auglab report", "",
             f"Produced by `dvc repro` (stage `report`) on: {machine()}.",
             "Accuracies are on each dataset's official test split (10,000 images), scored by each training stage (`train@<exp>`) once its model is written;",
             "the studies' numbers are what they report. `dvc metrics diff` compares `reports/metrics.json`.", ""]
    headline_lines, headline_numbers = headline_section(inputs, config.headline, figures)
    lines += headline_lines
    lines += studies_section(inputs, config.studies, scores, trained, figures)
    sweep_lines, sweep_headline = sweeps_section(inputs, sweeps, figures)
    lines += sweep_lines
    lines += gan_section(inputs, gan, figures)
    lines += sanity_section(inputs, checks, builds, figures)
    lines += confusion_section(inputs, config.confusion, device, figures)
    lines += filters_section(inputs, config.filters, device, figures)
    lines += ["## Timing", "", "Training seconds per experiment (epochs only) and per GAN build, from DVCLive.", "",
              table(["stage", "seconds"], [[f"train@{n}", f"{trained[n].get('train_seconds', 0):.1f}"]
                                           for n in experiments]
                    + [[f"gan@{n}", f"{g['seconds']:.1f}"] for n, g in gan.items()]), ""]
    numbers = {
        "studies": {key: {row.experiment: scores[row.experiment]["accuracy"] for row in study.rows.values()}
                    for key, study in config.studies.items()},
        "gan": {name: {"fid": g["fid"], "cas": g["cas"], "real_accuracy": g["real_accuracy"]} for name, g in gan.items()},
        "sanity": {c["build"]: round(c["rate"], 4) for c in checks},
        "sweeps": sweep_headline,
        "headline": headline_numbers,
    }
    return lines, numbers
