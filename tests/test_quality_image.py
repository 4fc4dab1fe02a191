"""benchmarks/quality_image.py without the photos: the skip when ../shared is absent, argument
handling, the targets it checks and the configs it trains with."""

import importlib
from pathlib import Path

import pytest

from tf_shopee.config import RunConfig

REPOSITORY = Path(__file__).resolve().parents[1]


def load_script():
    """The benchmark module (benchmarks/ is a package: ``python -m benchmarks.quality_image``)."""
    return importlib.import_module("benchmarks.quality_image")


def test_absent_photos_skip_with_a_message(tmp_path, capsys):
    quality_image = load_script()
    assert quality_image.main(["--data", str(tmp_path / "absent"),
                               "--json", str(tmp_path / "out.json")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()


def test_unknown_methods_are_refused(tmp_path, capsys):
    quality_image = load_script()
    with pytest.raises(SystemExit) as exit_info:
        quality_image.main(["--methods", "zero_shot_lite0,resnet", "--data", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "resnet" in capsys.readouterr().err


def test_targets_compare_the_reference_with_the_raw_cosine_and_fine_tuned_rows():
    quality_image = load_script()
    report = {
        "methods": {
            "zero_shot_lite0": {"oracle_f1_alone": 0.5512, "f1_alone": 0.5506,
                                "recall_at_1": 0.9765, "oracle_f1": 0.6654},
            "finetuned_lite2": {"f1": 0.9066, "recall_at_1": 0.9958, "catalogue": {
                "recall_at_1_fold0_catalogue": 0.81, "recall_at_1_all_catalogue": 0.74,
                "top1_fold0_catalogue": 0.79, "top1_all_catalogue": 0.70}},
        },
        "models": {"finetuned_lite2": {"train_seconds": 1446.0}},
    }
    targets = quality_image.targets(report)
    assert targets["zero_shot_reproduces_reference"]["within_0.01"]
    row = targets["finetuned_lite2"]
    assert row["f1_at_least_0.90"] and row["recall_at_1_at_least_0.995"]
    assert row["train_minutes"] == 24.1 and row["train_minutes_at_most_30"]
    # The catalogue targets read recall@1 (nearest image), not the first listed match.
    assert row["catalogue_recall_at_1_27_at_least_0.80"]
    assert not row["catalogue_recall_at_1_81_at_least_0.75"]
    report["methods"]["finetuned_lite2"]["recall_at_1"] = 0.9898
    assert not quality_image.targets(report)["finetuned_lite2"]["recall_at_1_at_least_0.995"]


def test_the_fine_tuned_rows_train_image_configs_of_the_repository():
    quality_image = load_script()
    for spec in quality_image.FINE_TUNED_MODELS.values():
        config = RunConfig.load(REPOSITORY / spec["config"]).validate()
        assert config.model.kind == "image"
        assert config.model.image.backbone.startswith("efficientnet_lite")
        assert config.model.image.weights == "imagenet"
