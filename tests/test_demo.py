"""The demo's reuse of earlier steps (the full demo is ``make demo``, too slow for the suite)."""

import json

import pytest

import tf_shopee  # noqa: F401  (sets TensorFlow's environment defaults first)
from tf_shopee.config import RunConfig, tiny_overrides
from tf_shopee.demo import _exported_with


def _fake_export(directory, config=None):
    directory.mkdir(parents=True)
    (directory / "tf_shopee_export.json").write_text(json.dumps({"kind": "image"}))
    if config is not None:
        config.save(directory / "config.json")
    return directory


def test_an_export_is_reused_only_when_it_was_trained_with_the_same_config(tmp_path):
    config = RunConfig(name="demo_image").override(tiny_overrides("image") + ["train.epochs=6"])
    same = _fake_export(tmp_path / "same", RunConfig.from_dict(config.to_dict()))
    older = _fake_export(
        tmp_path / "older",
        RunConfig(name="demo_image").override(tiny_overrides("image") + ["train.epochs=3"]),
    )
    without_config = _fake_export(tmp_path / "no_config")

    assert _exported_with(same, config)
    assert not _exported_with(older, config)  # an older demo recipe is retrained
    assert not _exported_with(without_config, config)
    assert _exported_with(without_config, None)  # only "is it finished" was asked
    assert not _exported_with(tmp_path / "missing", None)


@pytest.mark.slow  # generates, converts and trains for real: about a minute on 2 quiet cores
def test_a_second_demo_run_reuses_the_models_it_trained(tmp_path, monkeypatch):
    """Through the real path: the demo's own generate, convert and train steps, run from a
    relative --workdir as ``make demo`` does, then the train step again."""
    from pathlib import Path

    import tf_shopee.training
    from tf_shopee import demo

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "MODEL_KINDS", ("text",))  # the cheaper model shows it
    workdir = Path("demo_run")
    tfrecord_dir = demo.generate_and_convert(workdir, postings=120, seed=0, image_size=32)
    assert not tfrecord_dir.is_absolute()
    epochs = {"text": 1}
    first = demo.train_models(workdir, tfrecord_dir, epochs=epochs, seed=0)
    trained = first["text"][0] / "saved_model.pb"
    written = trained.stat().st_mtime_ns

    def must_not_train(*args, **kwargs):
        raise AssertionError("the second demo run trained again instead of reusing its model")

    monkeypatch.setattr(tf_shopee.training, "train_and_evaluate", must_not_train, raising=False)
    again = demo.train_models(workdir, tfrecord_dir, epochs=epochs, seed=0)
    assert again == first
    assert trained.stat().st_mtime_ns == written
    # Another recipe (here: more epochs) is retrained, not reused.
    with pytest.raises(AssertionError, match="trained again"):
        demo.train_models(workdir, tfrecord_dir, epochs={"text": 2}, seed=0)


def _existing_demo(workdir, *, rows: int, generated_with: dict | None):
    """A demo folder as a finished step 1 leaves it: train.csv (and the settings record)."""
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    lines = ["posting_id,image,image_phash,title,label_group"]
    lines += [f"p{row},p{row}.jpg,ffffffffffffffff,title {row},{row}" for row in range(rows)]
    (data_dir / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if generated_with is not None:
        (data_dir / "generated_with.json").write_text(json.dumps(generated_with))
    return workdir


def test_a_demo_folder_generated_with_other_settings_is_not_reused(tmp_path):
    """make demo DEMO_POSTINGS=1000 on a folder holding the 3,000-posting set stops, naming
    make clean-demo, before anything is converted or trained."""
    from tf_shopee import demo
    from tf_shopee.errors import UserError

    workdir = _existing_demo(tmp_path / "demo_run", rows=3,
                             generated_with={"postings": 3000, "seed": 0, "image_size": 96})
    with pytest.raises(UserError) as raised:
        demo.generate_and_convert(workdir, postings=1000, seed=0, image_size=96)
    message = str(raised.value)
    assert "postings 3000 (asked for 1000)" in message
    assert f"make clean-demo DEMO_DIR={workdir}" in message
    assert not (workdir / "tfrecords").exists()
    # Another seed or photo size is another set too; the same settings pass the check.
    with pytest.raises(UserError, match=r"seed 0 \(asked for 1\)"):
        demo._check_existing_set(workdir, {"postings": 3000, "seed": 1, "image_size": 96})
    demo._check_existing_set(workdir, {"postings": 3000, "seed": 0, "image_size": 96})


def test_a_demo_folder_without_a_settings_record_is_checked_by_its_row_count(tmp_path):
    """A folder left by a demo older than the settings record: the CSV's rows count."""
    from tf_shopee import demo
    from tf_shopee.errors import UserError

    workdir = _existing_demo(tmp_path / "old_demo", rows=5, generated_with=None)
    with pytest.raises(UserError, match=r"postings 5 \(asked for 1000\).*make clean-demo"):
        demo._check_existing_set(workdir, {"postings": 1000, "seed": 0, "image_size": 96})
    demo._check_existing_set(workdir, {"postings": 5, "seed": 0, "image_size": 96})
