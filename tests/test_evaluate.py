"""Evaluation metrics against hand-computed values, and where test labels come from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from machine_monitor.errors import ConfigError
from machine_monitor.reports.evaluate import (
    domain_auc,
    evaluate_scores,
    infer_domain,
    infer_label,
    label_paths,
    ranking_metrics,
    read_split,
    threshold_metrics,
)
from tests.conftest import VALVE_SPLIT

# Five normal clips and four anomalies. Sorted by score, highest first:
#   0.9 A, 0.8 A, 0.7 A, 0.6 N, 0.5 A, 0.4 N, 0.3 N, 0.2 N, 0.1 N
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.5, 0.7, 0.8, 0.9])


def test_auc_counts_the_anomaly_normal_pairs_ranked_correctly():
    # 0.9, 0.8, 0.7 beat all 5 normals (15 pairs); 0.5 beats 4 of them: 19 of 20 pairs.
    assert ranking_metrics(LABELS, SCORES)["auc"] == pytest.approx(19 / 20)


def test_pauc_is_the_mcclish_standardised_area_up_to_fpr_0_1():
    # The ROC climbs to TPR 3/4 at FPR 0 and stays there until FPR 1/5 (the normal at 0.6),
    # so the raw area over FPR in [0, 0.1] is 0.1 * 3/4 = 0.075. scikit-learn (and the DCASE
    # baselines) standardise it: 0.5 * (1 + (A - 0.1**2 / 2) / (0.1 - 0.1**2 / 2)) = 33/38.
    m = ranking_metrics(LABELS, SCORES, max_fpr=0.1)
    assert m["pauc"] == pytest.approx(33 / 38)
    assert m["max_fpr"] == 0.1


def test_threshold_metrics_flag_scores_strictly_above_the_threshold():
    # Threshold 0.55 flags 0.6 (normal: a false alarm), 0.7, 0.8, 0.9; misses 0.5.
    m = threshold_metrics(LABELS, SCORES, 0.55)
    assert m["confusion_matrix"] == [[4, 1], [1, 3]]  # [[tn, fp], [fn, tp]]
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # A score equal to the threshold is not flagged (as Detector.predict: score > threshold).
    assert threshold_metrics(LABELS, SCORES, 0.9)["confusion_matrix"] == [[5, 0], [4, 0]]


def test_nothing_flagged_gives_zero_precision_instead_of_a_warning():
    m = threshold_metrics(LABELS, SCORES, 10.0)
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)


def test_precision_and_recall_differ_when_the_threshold_is_low():
    # Threshold 0.35 flags 0.4, 0.6 (false alarms) and all four anomalies: tp 4, fp 2, fn 0.
    m = threshold_metrics(LABELS, SCORES, 0.35)
    assert m["confusion_matrix"] == [[3, 2], [0, 4]]
    assert m["precision"] == pytest.approx(4 / 6)
    assert m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))


def test_domain_auc_pits_each_domains_normals_against_all_anomalies():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.5, 0.8])
    domains = ["source", "source", "target", "target", "source", "target"]
    d = domain_auc(labels, scores, domains)
    # source: normals 0.1, 0.2 vs anomalies 0.5, 0.8: all 4 pairs right.
    # target: normals 0.6, 0.7 vs anomalies 0.5, 0.8: only 0.8 beats them, 2 of 4 pairs.
    assert d == {"source": {"auc": 1.0, "n_normal": 2, "n_anomaly": 2},
                 "target": {"auc": 0.5, "n_normal": 2, "n_anomaly": 2}}
    assert domain_auc(labels, scores, [None] * 6) == {}


def test_evaluate_scores_gathers_every_number():
    m = evaluate_scores(LABELS, SCORES, 0.55, domains=["source"] * 9)
    assert (m["n"], m["n_normal"], m["n_anomaly"]) == (9, 5, 4)
    assert m["auc"] == pytest.approx(0.95) and m["pauc"] == pytest.approx(33 / 38)
    assert m["confusion_matrix"] == [[4, 1], [1, 3]] and m["threshold"] == 0.55
    assert m["domains"]["source"]["auc"] == pytest.approx(0.95)
    json.dumps(m)  # the CLI writes it as is


@pytest.mark.parametrize("labels, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "both normal and anomalous"),
    ([0, 1], [0.1, np.nan], "not finite"),
    ([0, 2], [0.1, 0.2], "0 \\(normal\\) or 1"),
    ([0, 1, 1], [0.1, 0.2], "equal length"),
])
def test_metrics_refuse_inputs_they_cannot_score(labels, scores, message):
    with pytest.raises(ConfigError, match=message):
        evaluate_scores(labels, scores, 0.5)


@pytest.mark.parametrize("max_fpr", [0.0, -0.1, 1.5])
def test_max_fpr_outside_0_1_is_refused(max_fpr):
    with pytest.raises(ConfigError, match="max_fpr must be in"):
        ranking_metrics(LABELS, SCORES, max_fpr=max_fpr)


# -- labels --------------------------------------------------------------------
@pytest.mark.parametrize("path, label, domain", [
    ("valve/test/section_00_source_test_anomaly_0003_pat_01.wav", 1, "source"),
    ("valve/test/section_00_target_test_normal_0025_pat_02.wav", 0, "target"),
    ("pump/test/normal_id_00_00000032.wav", 0, None),  # DCASE 2020
    ("pump/test/anomaly_id_02_00000059.wav", 1, None),
    ("recordings/test/anomaly_bearing_000.wav", 1, None),  # the demo set
    ("fan/abnormal/00000012.wav", 1, None),  # MIMII folders
    ("fan/normal/00000012.wav", 0, None),
    ("fan/id_00/Anomaly/clip-7.flac", 1, None),
    ("fan/anomalous/clip.wav", 1, None),
    ("fan/anomaly/sub/clip.wav", 1, None),  # the nearest labelled folder counts
    ("fan/abnormal/normal_0001.wav", 0, None),  # the file name outranks the folder
    ("fan/test/normalized_gain.wav", None, None),  # a whole token, not a substring
    ("fan/test/normal_vs_anomaly.wav", None, None),  # contradictory: no label
    ("fan/test/clip_0001.wav", None, None),
])
def test_labels_and_domains_come_from_names_and_folders(path, label, domain):
    assert infer_label(path) == label
    assert infer_domain(path) == domain


def test_unlabelled_files_are_an_error_that_names_them():
    with pytest.raises(ConfigError, match=r"no label for 1 of 2 files.*clip_0001\.wav"):
        label_paths(["a/normal_1.wav", "a/clip_0001.wav"])
    c = label_paths(["a/normal_1.wav", "b/abnormal/x.wav", "section_00_target_test_anomaly_0001.wav"])
    assert c.labels.tolist() == [0, 1, 1] and c.domains == [None, None, "target"]


def test_split_file_paths_resolve_against_root_beside_the_split_file(tmp_path):
    (tmp_path / "splits").mkdir()
    split = tmp_path / "splits" / "pump.json"
    split.write_text(json.dumps({"root": "..", "train": ["data/n0.wav"],
                                 "test": [["data/n1.wav", 0, "source"], ["data/x.wav", 1, "target"],
                                          ["data/y.wav", 1]]}))
    c = read_split(split)
    assert [p.resolve() for p in c.paths] == [(tmp_path / "data" / n).resolve() for n in ("n1.wav", "x.wav", "y.wav")]
    assert c.labels.tolist() == [0, 1, 1]
    assert c.domains == ["source", "target", None]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a split file"),
    ('{"train": []}', "not a split file with a 'test' list"),
    ('{"test": [["a.wav", 2, "source"]]}', r"test\[0\] must be \[path, label 0/1, domain\]"),
    ('{"test": []}', "is empty"),
])
def test_broken_split_files_are_refused_with_a_reason(tmp_path, content, message):
    f = tmp_path / "s.json"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_split(f)
    with pytest.raises(ConfigError, match="no such split file"):
        read_split(tmp_path / "missing.json")


def test_the_shared_valve_split_reads_as_documented():
    if not VALVE_SPLIT.is_file():
        pytest.skip(f"real-audio test: {VALVE_SPLIT} not found (shared data sits beside the checkout)")
    c = read_split(VALVE_SPLIT)
    assert len(c) == 150 and int(c.labels.sum()) == 100
    assert sorted(set(c.domains)) == ["source", "target"]
    assert all(p.is_file() for p in c.paths)
    # The split's labels agree with what the DCASE file names say.
    assert [infer_label(p) for p in c.paths] == c.labels.tolist()
    assert [infer_domain(p) for p in c.paths] == c.domains
