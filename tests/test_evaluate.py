"""Evaluation: metrics against hand-computed values, confusion rows, predictions, the gallery,
submission.csv, and the scoring the training stages end with on a Kaggle-style split whose test
rows are unlabelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import script_module
from test_train import STATS, experiment, toy_data

from auglab import AuglabError, checkpoint, evaluate, plots, shards, train

NAMES = [f"c{k}" for k in range(10)]


def hand_metrics(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float, float]:
    """Accuracy and macro precision/recall/F1 computed class by class, a second way beside the code's counts."""
    precision, recall, f1 = [], [], []
    for c in range(10):
        tp = np.sum((predicted == c) & (labels == c))
        p = tp / max(np.sum(predicted == c), 1)
        r = tp / max(np.sum(labels == c), 1)
        precision.append(p)
        recall.append(r)
        f1.append(0.0 if p + r == 0 else 2 * p * r / (p + r))
    return float(np.mean(labels == predicted)), float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))


def test_metrics_match_hand_computed_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    predicted = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    found = evaluate.metrics(labels, predicted, 0.5, NAMES)
    accuracy, precision, recall, f1 = hand_metrics(labels, predicted)
    assert found["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert found["precision"] == pytest.approx(precision, abs=1e-6)
    assert found["recall"] == pytest.approx(recall, abs=1e-6)
    assert found["f1"] == pytest.approx(f1, abs=1e-6)
    assert found["errors"] == int(np.sum(labels != predicted)) and found["loss"] == 0.5
    assert found["per_class_accuracy"]["c3"] == pytest.approx(np.mean(predicted[labels == 3] == 3), abs=1e-6)


def test_confusion_rows_one_per_image_with_class_names():
    labels, predicted = np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])
    lines = evaluate.confusion_rows(labels, predicted, NAMES).decode().splitlines()
    assert lines == ["actual,predicted", "c0,c0", "c1,c2", "c2,c2", "c2,c1"]


def test_submission_format():
    text = evaluate.submission(np.array([7, 2, 1], dtype=np.uint8)).decode()
    assert text == "ImageId,Label\n1,7\n2,2\n3,1\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small CNN trained on separable toy digits, saved as the train stage saves it."""
    folder = tmp_path_factory.mktemp("model")
    run = experiment(epochs=3)
    result = train.train(run, toy_data(512), toy_data(64, seed=1), STATS, folder / "ck.pt", log=lambda m: None)
    checkpoint.save_model(folder / "model.pt", run, result.model, STATS, NAMES)
    return folder / "model.pt"


def test_predict_scores_a_trained_model_and_writes_predictions(model, tmp_path):
    net, saved = checkpoint.load_model(model, torch.device("cpu"))
    test = toy_data(200, seed=2)
    images, labels = test.images.squeeze(1).numpy(), test.labels.numpy().astype(np.uint8)
    found = evaluate.predict(net, images, labels, saved["mean"], saved["std"])
    assert found.scores.shape == (200, 10) and found.loss > 0
    assert np.mean(found.predicted == labels) > 0.9  # the toy task is learnable
    evaluate.write_predictions(tmp_path / "p.parquet", np.arange(200), labels, found, NAMES)
    table = pq.read_table(tmp_path / "p.parquet")
    assert table.num_rows == 200 and table["predicted"].to_pylist() == found.predicted.tolist()
    assert all(0 < c <= 1 for c in table["confidence"].to_pylist())
    shown = plots.gallery(tmp_path / "g.png", images, labels, found.predicted, NAMES, "t")
    assert shown == min(plots.GALLERY_IMAGES, int(np.sum(found.predicted != labels)))
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_labels_out_of_range_are_refused():
    with pytest.raises(AuglabError, match="label 12 out of range for a 10-class model"):
        evaluate.check_labels(np.array([1, 12]), 10, "x")


def write_dataset(folder: Path, labelled_test: bool) -> None:
    splits = {}
    for name, seed, labelled in (("val", 3, True), ("test", 4, labelled_test)):
        data = toy_data(120, seed=seed)
        layout = shards.schema(height=28, width=28, dataset="kaggle_toy", split=name, classes=10, labelled=labelled)
        splits[name] = shards.write_split(folder, layout, np.arange(120), data.labels.numpy().astype(np.uint8)
                                          if labelled else None, data.images.squeeze(1).numpy())
    shards.write_manifest(folder, splits, dataset="kaggle_toy", class_names=NAMES)


@pytest.mark.parametrize("labelled_test", [True, False])
def test_scoring_writes_metrics_confusion_and_a_submission_for_unlabelled_test(model, tmp_path, labelled_test):
    write_dataset(tmp_path / "split", labelled_test)
    logged = []
    result = script_module("stages/train.py").score("toy", model, tmp_path / "split", torch.device("cpu"), tmp_path / "eval",
                                 tmp_path / "m.json", tmp_path / "c.csv", logged.append)
    assert json.loads((tmp_path / "m.json").read_text()) == json.loads(json.dumps(result))
    assert logged and logged[-1].startswith(f"toy: {result['split']} accuracy {result['accuracy']:.4f}")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["split"] == ("test" if labelled_test else "val") and metrics["images"] == 120
    assert len((tmp_path / "c.csv").read_text().splitlines()) == 1 + 120  # one row per scored image
    submission = tmp_path / "eval/submission.csv"
    assert submission.exists() != labelled_test
    if not labelled_test:
        lines = submission.read_text().splitlines()
        assert lines[0] == "ImageId,Label" and len(lines) == 121 and lines[1].startswith("1,")
        assert all(0 <= int(line.split(",")[1]) <= 9 for line in lines[1:])
