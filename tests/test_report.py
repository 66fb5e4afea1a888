"""The report's study tables: every row with a verdict against the study's own number."""

from __future__ import annotations

import pytest
from dvclive import Live

from auglab import report, report_figures
from auglab.params import Study


@pytest.mark.parametrize("ours, verdict", [(0.9499, "reproduced"), (0.9460, "reproduced"), (0.9545, "better"),
                                           (0.9450, "below")])
def test_verdict_uses_the_95_percent_interval_of_the_study_on_its_test_set(ours, verdict):
    # 0.9499 on 10,000 test images: +-1.96 * sqrt(0.9499 * 0.0501 / 10000) = +-0.00427
    assert report.verdict(ours, 0.9499, 10_000) == verdict
    assert report.verdict(ours, None, 10_000) == "-"


def test_study_table_shows_the_verdict_and_the_reason_of_a_row_below():
    study = Study(title="t", source="s", curves=False, rows={
        "kept": {"experiment": "a", "reported": 0.90},
        "short": {"experiment": "b", "reported": 0.95, "why": "5 epochs where the study ran 50"},
        "ours": {"experiment": "c", "reported": None}})
    metrics = {"accuracy": 0.9, "loss": 0.3, "precision": 0.9, "recall": 0.9, "f1": 0.9, "images": 10_000}
    text = report.study_table(study, {name: metrics for name in "abc"}, {name: {"train_seconds": 1.0} for name in "abc"})
    lines = text.splitlines()
    assert lines[0].endswith("| verdict |")
    assert lines[2].endswith("| reproduced |") and lines[3].endswith("| below: 5 epochs where the study ran 50 |")
    assert lines[4].endswith("| not reported | - | - |")


def test_sanity_scores_every_image_of_a_small_build_and_a_fixed_sample_of_a_large_one():
    assert report.sample_rows(500, limit=1000).tolist() == list(range(500))
    sample = report.sample_rows(144_000, limit=1000)
    assert len(sample) == len(set(sample.tolist())) == 1000 and sample.tolist() == sorted(sample.tolist())
    assert 0 <= sample[0] and sample[-1] < 144_000 and sample[-1] - sample[0] > 100_000  # spread, not a prefix
    assert report.sample_rows(144_000, limit=1000).tolist() == sample.tolist()  # the same rows every run


def test_cost_curves_share_the_training_seconds_over_epochs_by_their_speed(tmp_path):
    with Live(dir=str(tmp_path / "live"), save_dvc_exp=False, dvcyaml=None) as live:
        for speed, accuracy in ((100.0, 0.9), (200.0, 0.95), (100.0, 0.97)):  # the 2nd epoch took half as long
            live.log_metric("val/acc", accuracy, plot=True)
            live.log_metric("img_per_s", speed, plot=True)
            live.next_step()
        live.summary["train_seconds"] = 60.0
    minutes, accuracy = report_figures.minutes_and_val(tmp_path / "live")
    assert minutes.tolist() == pytest.approx([0.4, 0.6, 1.0]) and accuracy.tolist() == [0.9, 0.95, 0.97]
    report_figures.cost_curves(tmp_path / "cost.png", {"a": tmp_path / "live"}, "t")
    assert (tmp_path / "cost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Live(dir=str(tmp_path / "sparse"), save_dvc_exp=False, dvcyaml=None) as live:  # val_every 2 of 3 epochs
        for epoch, speed in enumerate((100.0, 200.0, 100.0)):
            if epoch != 0:
                live.log_metric("val/acc", 0.9 + epoch / 100, plot=True)
            live.log_metric("img_per_s", speed, plot=True)
            live.next_step()
        live.summary["train_seconds"] = 60.0
    minutes, accuracy = report_figures.minutes_and_val(tmp_path / "sparse")
    assert minutes.tolist() == pytest.approx([0.6, 1.0]) and accuracy.tolist() == [0.91, 0.92]
