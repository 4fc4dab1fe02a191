"""SavedModel export: raw inputs in, L2-normalised embeddings out, reloadable without tf_shopee."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tf_shopee  # noqa: F401  (sets TensorFlow's environment defaults first)
from tf_shopee.config import RunConfig, tiny_overrides
from tf_shopee.errors import UserError
from tf_shopee.export import (
    METADATA_FILE,
    THRESHOLDS_FILE,
    export_model,
    load_exported,
    read_export_metadata,
)

IMAGE_SIZE = 32
TITLES = [
    "Kopi Kapal Api 165g READY STOCK",
    "",  # an empty title must still embed
    "เสื้อยืด ผ้าฝ้าย สีขาว",  # Thai
    "保温杯 500ml 不锈钢",  # Chinese
    "Sabun Mandi Cair ÉCLAT 250 ml promo COD",
    " ".join(["panjang"] * 80),  # longer than the sequence length
]
TRAINING_TITLES = (
    TITLES
    + [
        "kopi susu gula aren 1 liter",
        "sabun cuci piring jeruk nipis 800ml",
        "kaos polos cotton combed 30s hitam",
    ]
    * 5
)


def _jpeg(pixels: np.ndarray, mode: str = "RGB", image_format: str = "JPEG") -> bytes:
    stream = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(stream, image_format)
    return stream.getvalue()


def _raw_images() -> list[bytes]:
    rng = np.random.default_rng(3)
    return [
        _jpeg(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)),
        _jpeg(rng.integers(0, 256, (90, 30, 3), dtype=np.uint8)),
        _jpeg(rng.integers(0, 256, (33, 33, 3), dtype=np.uint8), mode="L"),  # grayscale
        _jpeg(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8), image_format="PNG"),
        _jpeg(np.full((20, 20, 3), 200, np.uint8)),
        _jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    ]


def _tiny_config(kind: str) -> RunConfig:
    config = RunConfig()
    config.model.kind = kind
    config.override(tiny_overrides(kind))
    config.override([f"data.image_size={IMAGE_SIZE}", "model.embedding_dim=16"])
    return config


def _build(kind: str, tmp_path: Path):
    """A tiny real model of ``kind`` (and its title preprocessor) with non-trivial BN statistics."""
    import keras

    from tf_shopee.models import build_embedding_model

    config = _tiny_config(kind)
    preprocessor = None
    vocabulary_size = None
    if kind != "image":
        from tf_shopee.models.text import build_title_preprocessor

        preprocessor = build_title_preprocessor(
            config.model.text,
            titles=TRAINING_TITLES,
            vocabulary_path=str(tmp_path / f"{kind}-vocabulary.txt"),
        )
        vocabulary_size = preprocessor.vocabulary_size
    keras.utils.set_random_seed(0)
    model = build_embedding_model(
        config.model, image_size=IMAGE_SIZE, vocabulary_size=vocabulary_size
    )
    # Move the BatchNorm moving statistics away from their initial values, so that an export
    # that lost them (or used batch statistics) would not match.
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.3, np.float32))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    return config, model, preprocessor


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _reference_embeddings(kind, model, preprocessor, images, titles) -> np.ndarray:
    import tensorflow as tf

    from tf_shopee.data.pipeline import decode_image

    inputs = {}
    if kind != "text":
        inputs["image"] = tf.stack([decode_image(image, IMAGE_SIZE) for image in images])
    if kind != "image":
        inputs.update(preprocessor(tf.constant(titles)))
    embeddings = model(inputs, training=False).numpy()
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _variable_bytes(model) -> int:
    return sum(np.asarray(variable.numpy()).nbytes for variable in model.variables)


def _directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One export per model kind plus the Keras model's own embeddings of the same raw inputs."""
    tmp_path = tmp_path_factory.mktemp("exports")
    images = _raw_images()
    results = {}
    for kind in ("image", "text", "multimodal"):
        config, model, preprocessor = _build(kind, tmp_path)
        directory = export_model(
            model,
            kind=kind,
            export_dir=tmp_path / kind,
            image_size=IMAGE_SIZE,
            text_preprocessor=preprocessor,
            metadata={"num_classes": 7, "threshold": 0.61, "run_name": f"test-{kind}"},
            config=config,
            thresholds={"best_threshold": 0.61, "best_f1": 0.8},
        )
        expected = _reference_embeddings(kind, model, preprocessor, images, TITLES)
        np.save(tmp_path / f"{kind}-expected.npy", expected)
        results[kind] = {
            "directory": directory,
            "expected": expected,
            "variable_bytes": _variable_bytes(model),
        }
    return tmp_path, images, results


def test_reload_in_a_fresh_process_with_only_tensorflow_and_tensorflow_text(exports):
    tmp_path, images, results = exports
    (tmp_path / "images.json").write_text(json.dumps([image.hex() for image in images]))
    (tmp_path / "titles.json").write_text(json.dumps(TITLES, ensure_ascii=False))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        import tensorflow_text  # registers the tokenizer ops; nothing of tf_shopee is imported
        root = {str(tmp_path)!r}
        images = [bytes.fromhex(h) for h in json.load(open(root + "/images.json"))]
        titles = json.load(open(root + "/titles.json", encoding="utf-8"))
        for kind in ("image", "text", "multimodal"):
            serve = tf.saved_model.load(root + "/" + kind).signatures["serving_default"]
            feed = {{}}
            if kind != "text":
                feed["image_bytes"] = tf.constant(images)
            if kind != "image":
                feed["titles"] = tf.constant(titles)
            np.save(root + "/" + kind + "-served.npy", serve(**feed)["embeddings"].numpy())
        print("tf_shopee loaded:", any(name.startswith("tf_shopee") for name in sys.modules))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tf_shopee loaded: False" in result.stdout
    for kind, entry in results.items():
        served = np.load(tmp_path / f"{kind}-served.npy")
        assert served.shape == entry["expected"].shape == (len(TITLES), 16)
        np.testing.assert_allclose(served, entry["expected"], atol=2e-5, err_msg=kind)
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_load_exported_embeds_in_batches(exports):
    _, images, results = exports
    for kind, entry in results.items():
        exported = load_exported(entry["directory"], expected_kind=kind)
        assert exported.kind == kind
        assert exported.embedding_dim == 16
        assert exported.threshold == 0.61
        assert exported.metadata["num_classes"] == 7
        assert exported.metadata["run_name"] == f"test-{kind}"
        # Batches of 4 over 6 postings: a full and a partial batch; extra inputs are ignored.
        embeddings = exported.embed(images=images, titles=TITLES, batch_size=4)
        np.testing.assert_allclose(embeddings, entry["expected"], atol=2e-5, err_msg=kind)
        assert exported.embed(images=[], titles=[]).shape == (0, 16)


def test_variables_on_disk_are_stored_once(exports):
    _, _, results = exports
    for kind, entry in results.items():
        on_disk = _directory_bytes(entry["directory"] / "variables")
        # Tiny models: the checkpoint's object graph and index (names of ~300 variables) weigh
        # as much as a few dozen KiB of weights; the 1.1x bound is checked on a real size below.
        assert on_disk <= 1.1 * entry["variable_bytes"] + 256 * 1024, (kind, on_disk)


@pytest.mark.slow
def test_variables_on_disk_at_most_1_1x_the_parameter_bytes_for_efficientnet_b0(tmp_path):
    import keras

    from tf_shopee.models import build_embedding_model

    config = _tiny_config("image")
    config.override(["model.image.backbone=efficientnet_b0", "model.embedding_dim=512"])
    keras.utils.set_random_seed(0)
    model = build_embedding_model(config.model, image_size=64)
    directory = export_model(
        model, kind="image", export_dir=tmp_path / "b0", image_size=64, metadata={}, config=config
    )
    parameter_bytes = _variable_bytes(model)
    on_disk = _directory_bytes(directory / "variables")
    assert parameter_bytes > 16e6  # EfficientNetB0 + head: about 4.7 M float32 parameters
    # Keras ExportArchive / model.export would store every variable twice (about 2x).
    assert on_disk <= 1.1 * parameter_bytes, (on_disk, parameter_bytes)


def test_metadata_config_and_thresholds_beside_the_model(exports):
    _, _, results = exports
    directory = results["multimodal"]["directory"]
    metadata = read_export_metadata(directory)
    assert metadata["format"] == "tf_shopee.embedding_model"
    assert metadata["format_version"] == 1
    assert metadata["kind"] == "multimodal"
    assert metadata["image_size"] == IMAGE_SIZE
    assert metadata["inputs"] == ["image_bytes", "titles"]
    assert RunConfig.load(directory / "config.json").model.kind == "multimodal"
    assert json.loads((directory / THRESHOLDS_FILE).read_text())["best_threshold"] == 0.61
    # No temporary folder is left beside the export.
    assert not [path for path in directory.parent.iterdir() if path.name.startswith(".")]


def test_missing_inputs_are_user_errors(exports):
    _, images, results = exports
    with pytest.raises(UserError, match="needs titles"):
        load_exported(results["text"]["directory"]).embed(images=images)
    with pytest.raises(UserError, match="differ in length"):
        load_exported(results["multimodal"]["directory"]).embed(images=images, titles=TITLES[:2])


def test_a_folder_that_is_not_an_export_is_refused(tmp_path, exports):
    _, _, results = exports
    with pytest.raises(UserError, match="not found"):
        load_exported(tmp_path / "missing")
    with pytest.raises(UserError, match="not a tf_shopee export"):
        load_exported(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / METADATA_FILE).write_text(json.dumps({"format": "something_else"}))
    with pytest.raises(UserError, match="format"):
        load_exported(other)
    (other / METADATA_FILE).write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        load_exported(other)
    with pytest.raises(UserError, match="holds a image model, but a text model is needed"):
        load_exported(results["image"]["directory"], expected_kind="text")


def test_export_replaces_an_old_export_but_never_a_foreign_folder(tmp_path):
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model({"image": inputs}, outputs)
    config = _tiny_config("image")
    common = dict(kind="image", image_size=IMAGE_SIZE, config=config)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a tf_shopee export"):
        export_model(model, export_dir=foreign, metadata={}, **common)
    assert (foreign / "notes.txt").read_text() == "keep me"

    target = tmp_path / "model"
    export_model(model, export_dir=target, metadata={"run_name": "first"}, **common)
    export_model(model, export_dir=target, metadata={"run_name": "second"}, **common)
    assert read_export_metadata(target)["run_name"] == "second"
    assert sorted(os.listdir(tmp_path)) == ["foreign", "model"]  # no temporary folders left
    with pytest.raises(UserError, match="needs its text_preprocessor"):
        export_model(model, export_dir=tmp_path / "text", metadata={}, **{**common, "kind": "text"})
