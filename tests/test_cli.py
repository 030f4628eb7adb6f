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
from conftest import once

pytestmark = once  # conftest.ONCE_BACKEND

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
        (["evaluate", "--model", "preset_dirs", "--task", "gsm8k"], "pass --data-dir DIR"),
        (["evaluate", "--model", "no_such_preset"], "Could not load the preset 'no_such_preset'"),
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
        (["demo", "--student-sampler", "nucleus"], "unknown sampler 'nucleus'"),
        (["demo", "--teacher-sampler", "top_p:q=1"], "--teacher-sampler 'top_p:q=1'"),
        (["demo", "--cross-entropy-weight", "step:0.5"], "--cross-entropy-weight takes"),
        (["demo", "--cross-entropy-weight", "1.5"], "--cross-entropy-weight takes"),
        (["demo", "--lora-rank", "0"], "--lora-rank must be at least 1"),
        (["demo", "--loss-chunk-size", "0"], "--loss-chunk-size must be at least 1"),
        (["distill", "--student", "preset_dirs"], "Give one of --teacher"),
        (
            ["distill", "--student", "preset_dirs", "--teacher-cache", "/no/cache.npz"],
            "No teacher cache at",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(arguments, message, preset_dirs, capsys):
    arguments = [preset_dirs[1] if a == "preset_dirs" else a for a in arguments]
    assert cli.main(arguments) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert len(error.strip().splitlines()) == 1, error


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


def test_help_writes_nothing_to_stderr_on_this_backend():
    """TensorFlow's absl and CUDA-stub lines stay off stderr (adaswitch_keras/quiet.py);
    ADASWITCH_VERBOSE=1 brings them back."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); import adaswitch_keras_cli; adaswitch_keras_cli.main()"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "ADASWITCH_VERBOSE")
    }
    done = subprocess.run(
        [sys.executable, "-c", code, "--help"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0 and "distill" in done.stdout
    assert done.stderr == ""
    loud = subprocess.run(
        [sys.executable, "-c", code, "--help"],
        env={**env, "ADASWITCH_VERBOSE": "1"},
        capture_output=True,
        text=True,
    )
    assert "absl" in loud.stderr or "cuda" in loud.stderr.lower()


def test_samplers_from_specs():
    """`--temperature` is the sampling temperature (TRL's), unless a spec sets its own."""
    sampler = cli.make_sampler("top_p:p=0.5,temperature=0.2", 0.9, "--teacher-sampler")
    assert isinstance(sampler, keras_hub.samplers.TopPSampler)
    assert (sampler.p, sampler.temperature) == (0.5, 0.2)
    sampler = cli.make_sampler("top_k:k=25", 0.5, "--student-sampler")
    assert (type(sampler), sampler.k, sampler.temperature) == (
        keras_hub.samplers.TopKSampler,
        25,
        0.5,
    )
    assert isinstance(
        cli.make_sampler("greedy", 0.5, "--student-sampler"), keras_hub.samplers.GreedySampler
    )


def test_cross_entropy_weights_from_specs():
    assert cli.make_cross_entropy_weight("0.3", 100) == 0.3
    for kind in ("linear", "cosine"):
        schedule = cli.make_cross_entropy_weight(f"{kind}:0.5", 100)
        values = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 50, 100)]
        assert values[0] == pytest.approx(0.5) and values[2] == pytest.approx(0.0, abs=1e-6)
        assert values[1] == pytest.approx(0.25, abs=1e-6)  # both halve at mid-way


def test_distill_options_reach_the_distiller(preset_dirs, tmp_path, monkeypatch):
    """Samplers, temperatures, the mixed loss and a LoRA student, from the CLI."""
    made = []

    class Recorded(cli.Distiller):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(cli, "Distiller", Recorded)
    teacher, student = preset_dirs
    options = ["--student-sampler", "top_p:p=0.5", "--teacher-sampler", "top_k:k=3"]
    options += ["--temperature", "0.5", "--loss-temperature", "2.0", "--lora-rank", "2"]
    options += ["--cross-entropy-weight", "linear:0.5", "--max-new-tokens", "48"]
    options += ["--loss-chunk-size", "16", "--sequence-length", "176"]
    options += ["--teacher-dtype", "bfloat16", "--student-dtype", "float32"]
    code = cli.main(
        ["distill", "--teacher", teacher, "--student", student, "--strategy", "on_policy"]
        + options
        + ["--batch-size", "4", "--output", str(tmp_path), *SMOKE]
    )
    assert code == 0
    (distiller,) = made
    assert (distiller.student_sampler.p, distiller.student_sampler.temperature) == (0.5, 0.5)
    assert (distiller.teacher_sampler.k, distiller.teacher_sampler.temperature) == (3, 0.5)
    assert distiller.temperature == 2.0
    assert isinstance(distiller.cross_entropy_weight, keras.optimizers.schedules.PolynomialDecay)
    trainable = {v.path for v in distiller.student.trainable_variables}
    assert trainable and all("lora_kernel" in path for path in trainable)
    assert distiller.loss_chunk_size == 16
    assert distiller.teacher.dtype_policy.name == "bfloat16"
    assert distiller.student.dtype_policy.name == "float32"
    assert distiller.student.preprocessor.sequence_length == 176
    assert distiller.teacher.preprocessor.sequence_length == 176
    report = check_outputs(tmp_path)
    assert {"cross_entropy", "teacher_calls", "teacher_decoded"} <= set(report["history"])
    assert (tmp_path / "student.lora.h5").stat().st_size > 0


def test_offline_teacher_from_the_cli(preset_dirs, tmp_path, capsys):
    """`cache-teacher` once, then `distill --teacher-cache` with no teacher model."""
    teacher, student = preset_dirs
    cache = tmp_path / "teacher.npz"
    code = cli.main(
        ["cache-teacher", "--teacher", teacher, "--limit", "16", "--top-k", "8"]
        + ["--max-new-tokens", "48", "--output", str(cache)]
    )
    assert code == 0 and cache.stat().st_size > 0
    assert ak.teacher_cache.meta(str(cache))["top_k"] == 8
    output = tmp_path / "run"
    common = ["distill", "--teacher-cache", str(cache), "--student", student]
    common += ["--batch-size", "4", "--output", str(output), *SMOKE]
    assert cli.main(common + ["--strategy", "supervised_kd"]) == 0
    report = check_outputs(output)
    assert report["teacher"] is None and len(report["history"]["divergence"]) == 2
    assert cli.main(common + ["--max-new-tokens", "40"]) == 2
    assert "packed for --max-new-tokens 48" in capsys.readouterr().err
    assert cli.main(common + ["--strategy", "on_policy"]) == 1
    assert "needs a teacher model" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["demo", "distill"])
def test_help_lists_the_features_and_their_options(command, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "docs/features/" in out
    for option in (
        "--lora-rank",
        "--cross-entropy-weight",
        "--student-sampler",
        "cache-teacher",
        "--loss-chunk-size",
    ):
        assert option in out
