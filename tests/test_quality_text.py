"""benchmarks/quality_text.py without the real data: argument handling, the skip when
../shared is absent, the run-once step records, and the shipped configs it trains with."""

import importlib
import json
import sys
from pathlib import Path

import pytest

from tf_shopee.config import RunConfig
from tf_shopee.errors import UserError

REPOSITORY = Path(__file__).resolve().parents[1]


def load_script():
    """The benchmark module (benchmarks/ is a package: ``python -m benchmarks.quality_text``)."""
    return importlib.import_module("benchmarks.quality_text")


def test_methods_are_parsed_in_protocol_order():
    quality_text = load_script()
    assert quality_text.parse_methods("combined, tfidf,minilm") == ["tfidf", "minilm", "combined"]


@pytest.mark.parametrize("text", ["tfidf,bert", ""])
def test_unknown_or_missing_methods_are_a_user_error(text):
    quality_text = load_script()
    with pytest.raises(UserError, match="--methods"):
        quality_text.parse_methods(text)


def test_absent_data_skips_with_a_message(tmp_path, capsys):
    quality_text = load_script()
    status = quality_text.main([
        "--data", str(tmp_path / "absent.csv.zip"), "--workdir", str(tmp_path / "work"),
        "--json", str(tmp_path / "out.json"),
    ])
    assert status == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "out.json").exists()


def test_negative_epochs_exit_with_status_2(tmp_path, capsys):
    quality_text = load_script()
    with pytest.raises(SystemExit) as raised:
        quality_text.main(["--epochs-minilm", "-1", "--data", str(tmp_path / "absent.csv")])
    assert raised.value.code == 2
    assert "--epochs-minilm" in capsys.readouterr().err


def test_a_finished_step_is_not_run_again(tmp_path):
    quality_text = load_script()
    script = tmp_path / "count.py"
    counter = tmp_path / "runs.txt"
    script.write_text(
        "import sys\n"
        f"with open({str(counter)!r}, 'a') as handle:\n"
        "    handle.write(sys.argv[1] + '\\n')\n"
    )
    runner = quality_text.Runner(tmp_path / "work", sys.executable)
    first = runner.run("count", str(script), ["once"], [counter])
    second = runner.run("count", str(script), ["once"], [counter])
    assert counter.read_text().splitlines() == ["once"]
    assert not first["skipped"] and second["skipped"]
    record = json.loads((tmp_path / "work" / "steps" / "count.json").read_text())
    assert "count.py once" in record["command"]


def test_a_failing_step_reports_its_log(tmp_path):
    quality_text = load_script()
    script = tmp_path / "fail.py"
    script.write_text("import sys\nprint('something broke')\nsys.exit(3)\n")
    runner = quality_text.Runner(tmp_path / "work", sys.executable)
    with pytest.raises(UserError, match="exit status 3(.|\n)*something broke"):
        runner.run("fail", str(script), [], [])
    assert not (tmp_path / "work" / "steps" / "fail.json").exists()


SHIPPED_CONFIGS = sorted(path.name for path in (REPOSITORY / "configs").glob("*.json"))


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_load_and_validate(name):
    config = RunConfig.load(REPOSITORY / "configs" / name).validate()
    assert config.name == Path(name).stem


def test_the_script_trains_with_the_shipped_text_configs():
    quality_text = load_script()
    for path in quality_text.MODEL_CONFIGS.values():
        config = RunConfig.load(REPOSITORY / path)
        assert config.model.kind == "text"
