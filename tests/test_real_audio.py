"""The core on real machine sound: the DCASE 2023 valve split from ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from machine_monitor import Detector

pytestmark = [pytest.mark.realaudio, pytest.mark.slow]


@pytest.fixture(scope="module")
def valve_model(valve_split, tmp_path_factory):
    det = Detector(epochs=10, patience=3, seed=0).fit(valve_split["train"])
    return det, det.save(tmp_path_factory.mktemp("models") / "valve")


def test_trains_on_the_valve_training_list_and_scores_its_test_list(valve_model, valve_split):
    det, path = valve_model
    assert det.n_clips_ == 50 and det.clip_seconds_ == pytest.approx(10.0)
    scores = det.score(valve_split["test"])
    assert scores.shape == (150,) and np.isfinite(scores).all()
    assert np.isfinite(det.threshold_value_)
    # Reloaded from disk, the detector gives bit-identical scores.
    assert np.array_equal(Detector.load(path).score(valve_split["test"][:20]), scores[:20])
