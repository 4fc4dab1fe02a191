"""The reference numbers of ../shared/data/shopee/README.md on the real train.csv (skipped when
the shared data is absent, as on a fresh clone)."""

from pathlib import Path

import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
TRAIN_CSV = REPOSITORY.parent / "shared" / "data" / "shopee" / "train.csv.zip"

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(not TRAIN_CSV.is_file(), reason=f"{TRAIN_CSV} is absent"),
]


def test_readme_reference_numbers_on_the_full_train_set():
    import pandas as pd

    from tf_shopee.matching.topk import matches_from_neighbours
    from tf_shopee.metrics import mean_f1_from_matches
    from tf_shopee.neighbours.phash import phash_neighbours
    from tf_shopee.neighbours.tfidf import tfidf_neighbours

    frame = pd.read_csv(TRAIN_CSV, dtype={"image_phash": str, "title": str})
    labels = frame["label_group"].to_numpy()
    assert len(frame) == 34250
    alone = [np.array([row]) for row in range(len(frame))]
    assert mean_f1_from_matches(alone, labels) == pytest.approx(0.4608, abs=5e-5)
    text = tfidf_neighbours(frame["title"].tolist(), k=51, min_score=0.55)
    f1_text = mean_f1_from_matches(matches_from_neighbours(text, 0.55), labels)
    assert f1_text == pytest.approx(0.6486, abs=5e-5)
    image = phash_neighbours(frame["image_phash"].tolist(), k=51, max_distance=8)
    f1_image = mean_f1_from_matches(matches_from_neighbours(image, 1 - 8 / 64), labels)
    assert f1_image == pytest.approx(0.5956, abs=5e-5)
