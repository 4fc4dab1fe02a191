"""The three command-line tools answer --help without starting TensorFlow, and document every
flag (a user's first contact: the answer must be instant and complete)."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "train.py": "tf_shopee.training.cli",
    "predict.py": "tf_shopee.predict",
    "convert_tfrecords.py": "tf_shopee.data.convert",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_answers_without_importing_tensorflow(script):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = [{script!r}, '--help']\n"
        "try:\n"
        f"    runpy.run_path({str(REPOSITORY / script)!r}, run_name='__main__')\n"
        "except SystemExit as done:\n"
        "    assert done.code == 0, done.code\n"
        "print('TENSORFLOW_IMPORTED', 'tensorflow' in sys.modules)\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                               cwd=REPOSITORY, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "usage:" in completed.stdout
    assert "TENSORFLOW_IMPORTED False" in completed.stdout


@pytest.mark.parametrize("module", sorted(SCRIPTS.values()))
def test_every_flag_has_help_text(module):
    parser = importlib.import_module(module).build_argument_parser()
    undocumented = [action.option_strings for action in parser._actions if not action.help]
    assert not undocumented
