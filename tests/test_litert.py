"""LiteRT export: a tiny image export converted to float16 and int8, loaded back through
``load_exported`` and compared with the SavedModel it came from.

Tolerances (stated, checked on 6 photos of a 32 px EfficientNet-tiny with BatchNorm statistics
that are not the identity): float32 conversion equal to the SavedModel within 1e-4 per component
of the L2-normalised embedding; float16 weights within cosine 0.999; full-integer int8 within
cosine 0.98 (measured 0.999 here; quantization error grows with depth, so real models are checked
on real photos by benchmarks/bench_litert.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export import _raw_images, _tiny_config

import tf_shopee  # noqa: F401  (sets TensorFlow's environment defaults first)
from tf_shopee.errors import UserError

FLOAT32_TOLERANCE = 1e-4
FLOAT16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.98


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    from tf_shopee.export import export_model
    from tf_shopee.models import build_embedding_model

    config = _tiny_config("image")
    model = build_embedding_model(config.model, image_size=32)
    rng = np.random.default_rng(0)
    for variable in model.variables:
        if "moving" in variable.path:
            variable.assign(variable + rng.random(variable.shape).astype("float32"))
    directory = tmp_path_factory.mktemp("export") / "image"
    export_model(model, kind="image", export_dir=directory, image_size=32,
                 metadata={"threshold": 0.42, "run_name": "tiny"}, config=config)
    return directory


@pytest.fixture(scope="module")
def converted(image_export, tmp_path_factory):
    from tf_shopee.export import convert_to_litert

    folder = tmp_path_factory.mktemp("litert")
    photos = _raw_images() * 4
    paths = {}
    for mode in ("float32", "int8"):
        paths[mode] = folder / f"model_{mode}.tflite"
        convert_to_litert(image_export, paths[mode], quantization=mode, calibration=photos,
                          calibration_source="tests", say=lambda message: None)
    return paths


def test_litert_embeddings_match_the_saved_model_within_the_stated_tolerance(image_export,
                                                                           converted):
    from tf_shopee.export import load_exported

    reference_model = load_exported(image_export)
    photos = _raw_images()
    reference = reference_model.embed(images=photos)
    float32 = load_exported(converted["float32"]).embed(images=photos, batch_size=4)
    assert np.abs(float32 - reference).max() <= FLOAT32_TOLERANCE
    int8_model = load_exported(converted["int8"], expected_kind="image")
    int8 = int8_model.embed(images=photos, batch_size=5)  # a partial batch of the interpreter
    assert int8.shape == reference.shape
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    assert np.sum(int8 * reference, axis=1).min() >= INT8_MIN_COSINE
    # The interpreter takes uint8 pixels: full-integer, quantized inside.
    assert int8_model.quantization == "int8"
    assert int8_model._input["dtype"] == np.uint8


def test_float16_keeps_the_saved_model_embeddings(image_export, tmp_path):
    from tf_shopee.export import convert_to_litert, load_exported

    path = tmp_path / "model.tflite"
    metadata = convert_to_litert(image_export, path, quantization="float16",
                                 calibration=_raw_images(), say=lambda message: None)
    assert metadata["check_against_saved_model"]["min"] >= FLOAT16_MIN_COSINE
    photos = _raw_images()
    cosines = np.sum(load_exported(path).embed(images=photos)
                     * load_exported(image_export).embed(images=photos), axis=1)
    assert cosines.min() >= FLOAT16_MIN_COSINE


def test_a_litert_model_has_the_interface_and_identity_of_an_export(image_export, converted):
    from tf_shopee.export import (
        load_exported,
        model_fingerprint,
        read_export_metadata,
    )

    metadata = read_export_metadata(converted["int8"])
    assert metadata["backend"] == "litert" and metadata["quantization"] == "int8"
    assert metadata["kind"] == "image" and metadata["image_size"] == 32
    assert metadata["threshold"] == 0.42 and metadata["run_name"] == "tiny"
    assert metadata["source_export"]["fingerprint"] == model_fingerprint(image_export)
    assert metadata["calibration"] == {"photos": 24, "source": "tests"}
    assert metadata["check_against_saved_model"]["min"] >= INT8_MIN_COSINE
    model = load_exported(converted["int8"])
    assert (model.kind, model.embedding_dim, model.threshold) == ("image", 16, 0.42)
    assert model.fingerprint == model_fingerprint(converted["int8"])
    # Different files, different identities (caches and catalogue manifests key on it).
    assert len({model.fingerprint, model_fingerprint(converted["float32"]),
                model_fingerprint(image_export)}) == 3
    assert model.embed(images=[]).shape == (0, 16)
    with pytest.raises(UserError, match="text model is needed"):
        load_exported(converted["int8"], expected_kind="text")


def test_an_export_without_the_pixel_signature_is_rebuilt_from_its_config(image_export,
                                                                          tmp_path):
    """Exports written before ``embed_pixels`` existed still convert and take pixels."""
    import shutil

    from tf_shopee.export import METADATA_FILE, convert_to_litert, load_exported

    old = tmp_path / "old"
    shutil.copytree(image_export, old)
    metadata = json.loads((old / METADATA_FILE).read_text())
    metadata.pop("signatures")
    (old / METADATA_FILE).write_text(json.dumps(metadata))
    photos = _raw_images()
    model = load_exported(old)
    model._pixels_function = None  # as loaded from an export without the signature
    from tf_shopee.data.views import ViewSpec

    views = model.embed_views(photos, ViewSpec())
    assert np.abs(views[:, 0] - model.embed(images=photos)).max() < 1e-4
    path = tmp_path / "old.tflite"
    convert_to_litert(old, path, quantization="float32", say=lambda message: None)
    assert np.abs(load_exported(path).embed(images=photos) - model.embed(images=photos)).max() \
        < FLOAT32_TOLERANCE


def _cli(arguments, capsys) -> str:
    from tf_shopee.export.__main__ import main

    with pytest.raises(SystemExit) as raised:
        main(arguments)
    captured = capsys.readouterr()
    assert raised.value.code == 2
    assert "Traceback" not in captured.err
    return captured.err


def test_the_command_line_names_what_is_wrong(image_export, tmp_path, capsys):
    out = str(tmp_path / "out.tflite")
    assert "--int8 needs representative photos" in _cli(
        ["litert", str(image_export), out, "--int8"], capsys)
    assert "must end in .tflite" in _cli(
        ["litert", str(image_export), str(tmp_path / "out.bin")], capsys)
    assert "not a tf_shopee export" in _cli(["litert", str(tmp_path), out], capsys)
    assert "go together" in _cli(
        ["litert", str(image_export), out, "--calibration", "x.csv"], capsys)
    (tmp_path / "photos.csv").write_text("posting_id,title\n1,a\n")
    assert "no 'image' column" in _cli(
        ["litert", str(image_export), out, "--int8", "--calibration",
         str(tmp_path / "photos.csv"), "--images", str(tmp_path)], capsys)
    (tmp_path / "broken.tflite").write_bytes(b"not a model")
    from tf_shopee.export import load_exported

    with pytest.raises(UserError, match="not a LiteRT"):
        load_exported(tmp_path / "broken.tflite")
    with pytest.raises(UserError, match="not found"):
        load_exported(tmp_path / "missing.tflite")
    assert not (tmp_path / "out.tflite").exists()


def test_a_text_export_is_refused(tmp_path):
    from tf_shopee.export import convert_to_litert

    directory = tmp_path / "text"
    directory.mkdir()
    (directory / "saved_model.pb").write_bytes(b"")
    (directory / "tf_shopee_export.json").write_text(json.dumps(
        {"format": "tf_shopee.embedding_model", "format_version": 1, "kind": "text",
         "embedding_dim": 8}))
    with pytest.raises(UserError, match="only image models"):
        convert_to_litert(directory, tmp_path / "t.tflite", say=lambda message: None)


@pytest.mark.slow
def test_the_litert_command_converts_from_a_csv_of_photos(image_export, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from tf_shopee.export import load_exported

    for index, photo in enumerate(_raw_images()):
        (tmp_path / f"{index}.jpg").write_bytes(photo)
    (tmp_path / "photos.csv").write_text(
        "posting_id,image\n" + "".join(f"{i},{i}.jpg\n" for i in range(6)))
    out = tmp_path / "int8.tflite"
    completed = subprocess.run(
        [sys.executable, "-m", "tf_shopee.export", "litert", str(image_export), str(out),
         "--int8", "--calibration", str(tmp_path / "photos.csv"), "--images", str(tmp_path)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "wrote" in completed.stdout and "cosine to the SavedModel" in completed.stdout
    assert load_exported(out).metadata["calibration"]["photos"] == 6


def test_a_cut_short_litert_file_and_bad_calibration_photos_are_named(converted, tmp_path,
                                                                     caplog):
    from tf_shopee.export import load_exported
    from tf_shopee.export.litert import calibration_photos

    data = converted["float32"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])  # a copy that stopped part-way
    with pytest.raises(UserError, match="cut.tflite"):
        load_exported(cut)
    photos = _raw_images()
    for index, photo in enumerate(photos[:3]):
        (tmp_path / f"{index}.jpg").write_bytes(photo)
    (tmp_path / "bad.jpg").write_bytes(photos[0][: len(photos[0]) // 2])  # truncated JPEG
    (tmp_path / "photos.csv").write_text(
        "posting_id,image\n" + "".join(f"{i},{i}.jpg\n" for i in range(3))
        + "b,bad.jpg\nm,missing.jpg\n")
    with caplog.at_level("WARNING"):
        found = calibration_photos(tmp_path / "photos.csv", tmp_path, count=10)
    assert sorted(found) == sorted(photos[:3])
    assert "2 photo(s) skipped" in caplog.text and "bad.jpg" in caplog.text


def test_concat_refuses_to_write_over_one_of_its_parts(image_export):
    from tf_shopee.export import concat_exports

    with pytest.raises(UserError, match="is one of the exports to concatenate"):
        concat_exports([image_export, image_export], image_export, say=lambda message: None)
    assert (image_export / "saved_model.pb").is_file()
