"""The `adaswitch-keras` command: demo smoke run, distill, evaluate, bad arguments."""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import pytest

import adaswitch_keras as ak
from adaswitch_keras import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = [
    "--steps",
    "2",
    "--log-every",
    "1",
    "--eval-limit",
    "8",
    "--eval-batch-size",
    "8",
    "--verbose",
    "0",
]


@pytest.fixture(scope="module")
def preset_dirs(tmp_path_factory):
    """A tiny teacher and student saved as local presets, long enough for arithmetic prompts."""
    root = tmp_path_factory.mktemp("presets")
    keras.utils.set_random_seed(0)
    for name, layers in (("teacher", 2), ("student", 1)):
        ak.tiny.causal_lm(num_layers=layers, hidden_dim=16, sequence_length=160).save_to_preset(
            str(root / name)
        )
    return str(root / "teacher"), str(root / "student")


def check_outputs(output):
    report = json.loads((output / "history.json").read_text())
    assert (output / "distillation.png").stat().st_size > 0
    student = keras_hub.models.CausalLM.from_preset(str(output / "student"))
    assert isinstance(student.generate("Question: Ann has 2 pens.", max_length=40), str)
    return report


def test_distill_with_local_presets(preset_dirs, tmp_path):
    teacher, student = preset_dirs
    code = cli.main(
        [
            "distill",
            "--teacher",
            teacher,
            "--student",
            student,
            "--task",
            "arithmetic",
            "--strategy",
            "adaswitch",
            "--option",
            "window=2",
            "--option",
            "k=1.5",
            "--max-new-tokens",
            "48",
            "--batch-size",
            "4",
            "--output",
            str(tmp_path),
            *SMOKE,
        ]
    )
    assert code == 0
    report = check_outputs(tmp_path)
    assert report["steps"] == 2 and len(report["history"]["loss"]) == 2
    assert report["strategy"] == "AdaSwitch(window=2, k=1.5)"
    assert 0 <= report["student_after"]["accuracy"] <= 1


def test_demo_smoke_run(tmp_path):
    assert cli.main(["demo", "--batch-size", "8", "--output", str(tmp_path), *SMOKE]) == 0
    report = check_outputs(tmp_path)
    assert report["teacher"]["accuracy"] > 0.5  # the shipped teacher is competent


def test_evaluate_prints_metrics(preset_dirs, tmp_path, capsys):
    output = tmp_path / "predictions.jsonl"
    assert (
        cli.main(["evaluate", "--model", preset_dirs[1], "--limit", "4", "--output", str(output)])
        == 0
    )
    out = capsys.readouterr().out
    assert 0 <= json.loads(out[out.rindex("{") :])["accuracy"] <= 1
    assert len(output.read_text().splitlines()) == 4


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["evaluate", "--model", "./no/such/dir"], "No preset directory at"),
        (
            ["evaluate", "--model", "preset_dirs", "--task", "gsm8k", "--data-dir", "/nowhere"],
            "No gsm8k test file at /nowhere",
        ),
        (["evaluate", "--model", "preset_dirs", "--task", "gsm8k"], "data_dir="),
        (["demo", "--steps", "0"], "--steps must be at least 1"),
        (
            ["demo", "--strategy", "skd", "--option", "window=2"],
            "SKD takes ['top_k']; received ['window']",
        ),
        (["demo", "--strategy", "skd", "--option", "top_k"], "--option takes KEY=VALUE"),
        (
            ["demo", "--strategy", "adaswitch", "--option", "divergence=nope"],
            "Unknown divergence 'nope'",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(arguments, message, preset_dirs, capsys):
    arguments = [preset_dirs[1] if a == "preset_dirs" else a for a in arguments]
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


def test_incompatible_tokenizers_are_a_clear_error(preset_dirs, tmp_path, capsys):
    other = tmp_path / "gpt2"
    ak.tiny.causal_lm("gemma", num_layers=1, hidden_dim=16, sequence_length=160).save_to_preset(
        str(other)
    )
    code = cli.main(["distill", "--teacher", preset_dirs[0], "--student", str(other), *SMOKE])
    assert code == 1
    assert "tokenizers differ" in capsys.readouterr().err


def test_console_script_sets_the_backend_before_keras(tmp_path):
    """Through the real entry point: --backend (after the command here, before
    it below) wins over KERAS_BACKEND; errors have no traceback."""
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow" if backend != "tensorflow" else "jax"}
    code = (
        f"import sys; sys.path.insert(0, {ROOT!r}); import adaswitch_keras_cli; "
        "sys.exit(adaswitch_keras_cli.main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "evaluate", "--backend", backend, "--model", "./missing"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "No preset directory at" in done.stderr and "Traceback" not in done.stderr
    probe = (
        f"import sys; sys.path.insert(0, {ROOT!r}); import adaswitch_keras_cli; "
        "sys.argv[1:] = ['--backend', sys.argv[1], '--help']\n"
        "try: adaswitch_keras_cli.main()\nexcept SystemExit: import keras; print(keras.backend.backend())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, backend], env=env, capture_output=True, text=True
    )
    assert done.stdout.strip().splitlines()[-1] == backend
