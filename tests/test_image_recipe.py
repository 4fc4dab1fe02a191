"""The image recipe's training options: catalogue photos as class members (never of validation
or held-out products), a higher resolution at the end, sub-center ArcFace, end to end on tiny
runs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from test_training import IMAGE_SIZE, tiny_arguments, write_tfrecords

import tf_shopee  # noqa: F401
from tf_shopee.config import RunConfig
from tf_shopee.errors import UserError
from tf_shopee.models.kind import ModelKind


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    return write_tfrecords(tmp_path_factory.mktemp("data") / "tiny")


def _catalogue(folder, labels, *, extra_rows="") -> str:
    """A catalogue CSV: one studio photo (coloured square on white) per label group."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["posting_id,image,title,label_group"]
    for label in labels:
        pixels = np.full((48, 48, 3), 255, np.uint8)
        pixels[10:38, 12:36] = (label * 13 % 256, 90, 200)
        stream = io.BytesIO()
        Image.fromarray(pixels).save(stream, "JPEG")
        (folder / f"c{label}.jpg").write_bytes(stream.getvalue())
        rows.append(f"c{label},c{label}.jpg,product {label},{5000 + label}")
    path = folder / "catalog.csv"
    path.write_text("\n".join(rows) + "\n" + extra_rows)
    return str(path)


def _config(tfrecords, catalog_csv, *extra) -> RunConfig:
    config = RunConfig()
    config.model.kind = ModelKind.IMAGE
    config.override([f"data.tfrecords={tfrecords}", f"data.catalog_csv={catalog_csv}",
                     "data.validation_fold=0", "data.holdout_folds=1", *extra])
    return config


def test_only_catalogue_photos_of_training_products_join(tfrecords, tmp_path):
    from tf_shopee.data.pipeline import make_dataset
    from tf_shopee.training.data import catalog_mix, read_data_facts

    # Labels 0..17, fold = label % 3: fold 0 validates, fold 1 is held out, fold 2 trains.
    csv = _catalogue(tmp_path / "catalogue", range(18), extra_rows="cx,c0.jpg,unknown,77\n")
    config = _config(tfrecords, csv, "data.catalog_fraction=0.5")
    facts = read_data_facts(config)
    lines = []
    mix = catalog_mix(config, facts, say=lines.append)
    assert sorted(mix.labels) == [label for label in range(18) if label % 3 == 2]
    assert "6 of 19 rows" in lines[0] and "12 held-out product" in lines[0]
    assert "1 not in the label map" in lines[0]
    dataset = make_dataset(facts.directory, training=True, global_batch_size=16,
                           image_size=IMAGE_SIZE, exclude_folds=facts.train_folds_excluded,
                           seed=3, catalog=mix)
    seen_catalogue = 0
    for batch in dataset.take(6):
        ids = batch["posting_id"].numpy()
        labels = batch["label"].numpy()
        catalogue = ids == b"catalog"
        seen_catalogue += int(catalogue.sum())
        assert set((labels % 3).tolist()) <= {2}  # nothing of folds 0 and 1, either way
        assert batch["image"].shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
        assert (batch["fold"].numpy()[catalogue] == -1).all()
    assert 20 <= seen_catalogue <= 76  # about half of 96 examples


def test_a_catalogue_photo_that_does_not_decode_is_left_out_before_training(tfrecords,
                                                                           tmp_path, caplog):
    from tf_shopee.training.data import catalog_mix, read_data_facts

    folder = tmp_path / "catalogue"
    csv = _catalogue(folder, [2, 5, 8])  # fold 2 trains
    photo = (folder / "c5.jpg").read_bytes()
    (folder / "c5.jpg").write_bytes(photo[: len(photo) // 2])
    config = _config(tfrecords, csv)
    lines = []
    with caplog.at_level("WARNING"):
        mix = catalog_mix(config, read_data_facts(config), say=lines.append)
    assert sorted(mix.labels) == [2, 8]
    assert "1 unreadable photo" in lines[0] and "c5.jpg" in caplog.text


def test_catalogue_options_are_checked(tfrecords, tmp_path):
    from tf_shopee.training.data import catalog_mix, read_data_facts

    config = _config(tfrecords, tmp_path / "missing.csv")
    with pytest.raises(UserError, match="data.catalog_csv: file not found"):
        catalog_mix(config, read_data_facts(config))
    csv = _catalogue(tmp_path / "only_validation", [0, 3])
    config = _config(tfrecords, csv)
    with pytest.raises(UserError, match="no row of .* belongs to a product of the training"):
        catalog_mix(config, read_data_facts(config))
    with pytest.raises(UserError, match="data.catalog_fraction"):
        _config(tfrecords, csv, "data.catalog_fraction=1.5").validate()
    with pytest.raises(UserError, match="train.final_epochs"):
        _config(tfrecords, "", "train.final_image_size=64", "train.final_epochs=99").validate()


def test_a_run_with_catalogue_photos_sub_centers_and_a_final_resolution_exports_at_it(
    tfrecords, tmp_path, capsys
):
    from tf_shopee.export import load_exported
    from tf_shopee.training import main

    csv = _catalogue(tmp_path / "catalogue", range(18))
    workdir = tmp_path / "run"
    main(tiny_arguments(
        tfrecords, workdir, "image", "--strategy", "one_device", "--epochs", "2",
        "--set", "train.steps_per_epoch=2", "--set", "train.validate=false",
        "--set", f"data.catalog_csv={csv}", "--set", "data.catalog_fraction=0.25",
        "--set", "model.arc_face.sub_centers=2", "--set", "train.final_image_size=48",
    ))  # fmt: skip
    output = capsys.readouterr().out
    assert "catalogue photos in training: 12 of 18 rows" in output
    model = load_exported(workdir.parent / f"{workdir.name}-export")
    assert model.image_size == 48 and model.metadata["image_size"] == 48
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["train"]["final_image_size"] == 48
    photo = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(photo, "JPEG")
    assert model.embed(images=[photo.getvalue()]).shape == (1, 16)
