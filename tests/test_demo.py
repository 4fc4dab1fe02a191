"""The demo's reuse of earlier steps (the full demo is ``make demo``, too slow for the suite)."""

import json

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
