"""Rewrite params.yaml and the report.yaml beside it in place into the CI profile: the real data
stages (a 2,000-image Fashion-MNIST val split, augment builds of at most 10,000 source images),
four experiments (and one train.members entry) and one GAN cut to seconds of training (1,000
samples per class, CAS against 10,000 real train images), S1's sweeps cut to 2 x 2 + 2 + 2
one-epoch cells, a 3-trial search, one flip-averaged "ensemble", and the report restricted to
what they produce.

Round-trip YAML (comments kept, as `dvc exp run -S` keeps them). Used by ci/review.sh, which the
GitHub workflow runs, and by tests/test_pipeline.py, so the workflow runs a tested profile. A
checkout from before report.yaml existed keeps its report as a params.yaml section; ci/review.sh
profiles such a base too, so that section is shrunk the same way.
Usage: python ci/profile.py params.yaml
"""

import sys
from pathlib import Path

from ruamel.yaml import YAML

EXPERIMENTS = {"s2_lenet_100": {"epochs": 3}, "s2_lenet_synthetic": {"epochs": 1},
               "s1_cnn_maxpool": {"train": ["train_1000"], "epochs": 1}}
FINETUNE = {"s0_transfer_tuned": {"epochs": 2}}
MEMBERS = {"s2_code_100": {"epochs": 3}}  # member@: S2's first 100, Keras-style
# Where the profile's seconds went besides training (bench/pipeline_cost.py on `make tour`): scoring
# a 12,000-image val split after every epoch, augmenting 48,000-55,000 images per build, FID
# features of 3 x 10,000 images, writing 60,000 GAN samples and training CAS on them and on the
# 58,000 real train images. The same stages, on smaller inputs.
FASHION_VAL = 2000  # val images of Fashion-MNIST (200 per class; 58,000 stay train)
AUGMENT_SOURCE = "train_10000"  # what the whole-train-split recipes (s1_copies, s0_light) augment
FID_SAMPLES = 2000  # generated (and as many real test and train) images FID compares
CAS_REAL = "train_10000"  # the real split CAS compares with: it trains on as many GAN samples ...
GAN_PER_CLASS = 1000  # ... so the GAN writes 1,000 per class, not 6,000


def scores_against_a_subset(root: Path) -> bool:
    """Whether the checkout at `root` has `gan.score.builds.<build>.real` (since 2026-12-03). A base
    checkout from before it scores CAS against the whole train split, so its GAN keeps writing
    6,000 images per class (ci/review.sh profiles such a base too)."""
    schema = root / "auglab/schema.py"
    return schema.is_file() and "\n    real: str" in schema.read_text()


def shrink(data: dict, subset: bool = True) -> None:
    for group, kept in (("experiments", EXPERIMENTS), ("finetune", FINETUNE)):
        entries = data["train"][group]
        for name in list(entries):
            if name in kept:
                entries[name].update(kept[name])
            else:
                del entries[name]
    members = data["train"].get("members", {})  # a base checkout from before train.members has none
    for name in list(members):  # the headline seeds (15 epochs each) go; one cheap member stays
        if name in MEMBERS:
            members[name].update(MEMBERS[name])
        else:
            del members[name]
    data["split"]["datasets"]["fashion_mnist"]["val_size"] = FASHION_VAL
    for recipe in data["augment"]["recipes"].values():
        if recipe["source"] == "train":
            recipe["source"] = AUGMENT_SOURCE
    gan = data["gan"]
    gan["builds"] = {"fashion_mnist": {**gan["builds"]["fashion_mnist"], "steps": 20}}  # its recipe, 20 steps
    gan["score"]["fid_samples"] = FID_SAMPLES
    gan["score"]["builds"] = {"fashion_mnist": {"dataset": "fashion_mnist", "extractor": "s1_cnn_maxpool"}}
    if subset:
        gan["builds"]["fashion_mnist"]["samples_per_class"] = GAN_PER_CLASS
        gan["score"]["builds"]["fashion_mnist"]["real"] = CAS_REAL
    gan["score"]["classifier"]["epochs"] = 1
    sweeps = data["sweeps"]
    sweeps["base"].update(train=["train_1000"], epochs=1)
    sweeps["grid"]["activations"] = ["relu", "tanh"]
    sweeps["grid"]["optimizers"] = ["adam", "sgd"]
    sweeps["batch_sizes"] = [64, 256]
    sweeps["regularization"]["epochs"] = 2
    for name in [name for name in sweeps["regularization"]["penalties"] if name not in ("none", "l2")]:
        del sweeps["regularization"]["penalties"][name]
    data["tune"].update(trials=3, startup_trials=1, budget={"train": ["train_1000"], "epochs": 1})
    data["ensembles"] = {"fashion_headline": {"dataset": "fashion_mnist", "members": ["s1_cnn_maxpool"], "flips": True}}


def shrink_report(report: dict) -> None:
    present = set(EXPERIMENTS) | set(FINETUNE) | set(MEMBERS)
    for key in list(report["studies"]):
        rows = report["studies"][key]["rows"]
        for label in [label for label, row in rows.items() if row["experiment"] not in present]:
            del rows[label]
        if not rows:
            del report["studies"][key]
    headline = report["headline"]
    headline["rows"] = {"Fashion-MNIST, CI model + flips": {"ensemble": "fashion_headline", "value": "accuracy",
                                                           "goal": 0.955, "study": 0.9205, "anchor": 0.967}}
    headline["speed"] = "s2_lenet_100"
    report["sanity"] = {"mnist_s2_expand": "s2_lenet_100", "fashion_mnist_s1_copies": "s1_cnn_maxpool"}
    report["filters"] = "s1_cnn_maxpool"
    report["confusion"] = ["s2_lenet_100", "s1_cnn_maxpool"]


def main(path: Path) -> None:
    yaml = YAML()
    data = yaml.load(path)
    shrink(data, scores_against_a_subset(path.resolve().parent))
    if "report" in data:  # a checkout from before report.yaml
        shrink_report(data["report"])
    yaml.dump(data, path)
    report_path = path.parent / "report.yaml"
    if report_path.exists():
        report = yaml.load(report_path)
        shrink_report(report)
        yaml.dump(report, report_path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
