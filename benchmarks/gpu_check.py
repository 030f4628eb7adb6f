"""A GPU machine's check: the core tests on one backend, then the step time
of OnPolicy, AdaSwitch and SKD at a real model's shape.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --output $OUT/gpu_check.json
    KERAS_BACKEND=jax python benchmarks/gpu_check.py --tiny --no-tests --steps 1

First `pytest -q -x` runs `--tests` (tests/test_distiller.py,
tests/test_rollout.py, tests/test_divergences.py by default) in a child
process on the backend. Then a Qwen2-1.5B-shaped teacher (28 layers, hidden
1536, 12 query heads, 2 KV heads) distils into a Qwen2-0.5B-shaped student
(24 layers, hidden 896, 14 query heads, 2 KV heads), both with random
bfloat16 weights and a 151,936-token vocabulary: batch 8, prompts of 128
tokens, 128 new tokens, AdamW(1e-5). Each strategy takes 2 warm-up steps, then
`--steps` timed `train_on_batch` steps (median); AdaSwitch runs once more
with `loss_chunk_size=128`.

Peak memory is the accelerator's where the backend reports it (JAX: since the
process started; TensorFlow and torch: per strategy), else the process's peak
RSS. The results file (commit, versions, device, settings, tests, per-strategy
numbers or the error that stopped a strategy) is rewritten after every stage,
so a run cut short keeps what it measured. `--tiny` shrinks the models (2
layers, hidden 64 and 128), batch 2, prompts 16 and 16 new tokens, float32,
for a CPU. To fit a time limit: `--runs` picks runs, `--tests FILE ...` or
`--no-tests` the tests, `--test-timeout` stops them (240 s by default).
"""

import argparse
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback

from provenance import REPO  # benchmarks/provenance.py
from provenance import git_commit

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # TF (tf.data) leaves the GPU to JAX

TESTS = ["tests/test_distiller.py", "tests/test_rollout.py", "tests/test_divergences.py"]
WARMUP_STEPS = 2
# Qwen2-0.5B and Qwen2-1.5B, and the tiny stand-ins of --tiny.
MODELS = {
    "student": dict(
        num_layers=24,
        hidden_dim=896,
        num_query_heads=14,
        num_key_value_heads=2,
        intermediate_dim=4864,
    ),
    "teacher": dict(
        num_layers=28,
        hidden_dim=1536,
        num_query_heads=12,
        num_key_value_heads=2,
        intermediate_dim=8960,
    ),
}
TINY_MODELS = {
    "student": dict(
        num_layers=2, hidden_dim=64, num_query_heads=4, num_key_value_heads=2, intermediate_dim=128
    ),
    "teacher": dict(
        num_layers=2, hidden_dim=128, num_query_heads=4, num_key_value_heads=2, intermediate_dim=256
    ),
}
RUNS = ("OnPolicy", "AdaSwitch", "SKD", "AdaSwitch-chunked")


def run_tests(files, backend, timeout):
    """`pytest -q -x files` in a child process: counts, exit code, seconds."""
    command = [sys.executable, "-m", "pytest", "-q", "-x", *files]
    env = {**os.environ, "KERAS_BACKEND": backend}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:  # its output comes as bytes
        returncode = None
        output = (error.stdout or b"").decode(errors="replace") + f"\ntimed out after {timeout} s"
    summary = re.findall(r"^.*\d+ (?:passed|failed|errors?|skipped).* in [\d.]+s.*$", output, re.M)
    counts = re.findall(
        r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", summary[-1] if summary else ""
    )
    return {
        "command": f"KERAS_BACKEND={backend} " + " ".join(["python", *command[1:]]),
        "returncode": returncode,
        "counts": {kind: int(n) for n, kind in counts},
        "seconds": time.perf_counter() - start,
        "output_tail": output[-3000:] if returncode != 0 else "",
    }


def device_and_versions(backend):
    """The accelerator in words, and the backend library's version."""
    if backend == "jax":
        import jax

        return [f"{d} ({d.device_kind})" for d in jax.devices()], jax.__version__
    if backend == "torch":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.cuda.get_device_name(i) for i in range(count)] or ["cpu"], torch.__version__
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("CPU")
    names = [
        f"{d.name} ({tf.config.experimental.get_device_details(d).get('device_name', d.device_type)})"
        for d in devices
    ]
    return names, tf.__version__


def reset_peak_memory(backend):
    """Start a strategy's accelerator peak afresh where the backend can (not JAX)."""
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory(backend):
    """(bytes, what they are): the accelerator's peak, else the peak RSS."""
    if backend == "jax":
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats and "peak_bytes_in_use" in stats:
            return stats["peak_bytes_in_use"], "jax peak_bytes_in_use (since start)"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"
    else:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"], "tf GPU:0 peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak RSS (since start)"


def causal_lm(config, tokenizer, sequence_length, dtype):
    """A Qwen2 `CausalLM` with random weights and tied embeddings."""
    import keras_hub

    backbone = keras_hub.models.QwenBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        rope_max_wavelength=1_000_000,
        tie_word_embeddings=True,
        dtype=dtype,
        **config,
    )
    preprocessor = keras_hub.models.QwenCausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return keras_hub.models.QwenCausalLM(backbone=backbone, preprocessor=preprocessor)


def rows(count, prompt_length, new_tokens):
    """Prompt/response pairs of digits and punctuation: one byte-level token
    per character (no merges), so prompts have exactly `prompt_length` tokens."""
    text = "".join(f"{i * 7919 % 1000:03d}+{i % 97:02d}=? " for i in range(10 * prompt_length))
    return [
        {
            "prompts": text[i : i + prompt_length],
            "responses": text[i + prompt_length :][: new_tokens - 1],
        }
        for i in range(count)
    ]


def time_strategy(teacher, student, strategy, data, args, backend, **kwargs):
    """Warm-up, then `args.steps` timed steps: median seconds, tokens/s, memory."""
    import keras
    import numpy as np

    import adaswitch_keras as ak

    distiller = ak.Distiller(
        teacher, student, strategy=strategy, max_new_tokens=args.new_tokens, seed=0, **kwargs
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-5))
    batches = [
        {k: np.asarray(v) for k, v in batch.items()}
        for batch in distiller.make_dataset(data, args.batch_size)
    ]
    prompt_tokens = (batches[0]["padding_mask"] & ~batches[0]["response_mask"]).sum(1)
    reset_peak_memory(backend)
    seconds = []
    for batch in batches:
        start = time.perf_counter()
        logs = distiller.train_on_batch(batch, return_dict=True)  # returns NumPy: synchronous
        seconds.append(time.perf_counter() - start)
    step = statistics.median(seconds[WARMUP_STEPS:])
    memory, memory_source = peak_memory(backend)
    return {
        "step_s": step,
        "step_s_all": seconds[WARMUP_STEPS:],
        "warmup_s": seconds[:WARMUP_STEPS],
        "new_tokens_per_s": args.batch_size * args.new_tokens / step,
        "prompt_tokens": [int(prompt_tokens.min()), int(prompt_tokens.max())],
        "peak_memory_bytes": int(memory),
        "peak_memory_source": memory_source,
        "last_logs": {k: float(v) for k, v in logs.items()},
    }


def benchmark(args, backend, results, write):
    """Every run of `args.runs`, each in its own try; results written after each."""
    import keras

    import adaswitch_keras as ak

    keras.utils.set_random_seed(0)
    tokenizer = ak.tiny.tokenizer("qwen2", size=args.vocabulary_size)
    sequence_length = args.prompt_length + args.new_tokens
    models = TINY_MODELS if args.tiny else MODELS
    dtype = "float32" if args.tiny else "bfloat16"
    teacher = causal_lm(models["teacher"], tokenizer, sequence_length, dtype)
    student = causal_lm(models["student"], tokenizer, sequence_length, dtype)
    results["models"] = {
        "dtype": dtype,
        "vocabulary_size": tokenizer.vocabulary_size(),
        **{
            role: {**models[role], "parameters": model.count_params()}
            for role, model in (("teacher", teacher), ("student", student))
        },
    }
    data = rows(args.batch_size * (WARMUP_STEPS + args.steps), args.prompt_length, args.new_tokens)
    runs = {
        "OnPolicy": (ak.OnPolicy(), {}),
        "AdaSwitch": (ak.AdaSwitch(), {}),
        "SKD": (ak.SKD(top_k=25), {}),
        "AdaSwitch-chunked": (ak.AdaSwitch(), {"loss_chunk_size": args.loss_chunk_size}),
    }
    for name in args.runs:
        strategy, kwargs = runs[name]
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            results["strategies"][name] = {
                "strategy": repr(strategy),
                **kwargs,
                **time_strategy(teacher, student, strategy, data, args, backend, **kwargs),
            }
        except Exception as error:  # e.g. out of memory: the other runs still go
            traceback.print_exc()
            results["strategies"][name] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        gc.collect()
        write()


def table(results):
    """The human-readable summary."""
    lines = [f"{'run':<18} {'step (ms)':>10} {'new tok/s':>10} {'peak (GiB)':>11}  switch rate"]
    for name, run in results["strategies"].items():
        if "error" in run:
            lines.append(f"{name:<18} error: {run['error'][:200]}")
            continue
        switch = run["last_logs"].get("switch_rate", float("nan"))
        lines.append(
            f"{name:<18} {1000 * run['step_s']:>10.1f} {run['new_tokens_per_s']:>10.1f} "
            f"{run['peak_memory_bytes'] / 2**30:>11.2f}  {switch:.2f}"
        )
    tests = results.get("tests")
    if tests:
        lines.append(
            f"tests: {tests['counts']} exit {tests['returncode']} in {tests['seconds']:.0f} s"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"))
    parser.add_argument("--tiny", action="store_true", help="tiny models and shapes, for a CPU")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="test files to run")
    parser.add_argument("--no-tests", dest="tests", action="store_const", const=[])
    parser.add_argument("--test-timeout", type=int, default=240, help="seconds")
    parser.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (5; tiny 2)")
    parser.add_argument("--batch-size", type=int, default=None, help="8; tiny 2")
    parser.add_argument("--prompt-length", type=int, default=None, help="128; tiny 16")
    parser.add_argument("--new-tokens", type=int, default=None, help="128; tiny 16")
    parser.add_argument("--loss-chunk-size", type=int, default=None, help="128; tiny 8")
    parser.add_argument("--vocabulary-size", type=int, default=151936)
    parser.add_argument("--output", default="gpu_check.json")
    args = parser.parse_args()
    defaults = (2, 2, 16, 16, 8) if args.tiny else (5, 8, 128, 128, 128)
    for key, default in zip(
        ("steps", "batch_size", "prompt_length", "new_tokens", "loss_chunk_size"), defaults
    ):
        if getattr(args, key) is None:
            setattr(args, key, default)
    os.environ["KERAS_BACKEND"] = args.backend  # the tests' and this process's backend

    start = time.perf_counter()
    results = {
        "commit": git_commit(),
        "backend": args.backend,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count()},
        "settings": {**vars(args), "warmup_steps": WARMUP_STEPS},
        "tests": None,
        "strategies": {},
    }

    def write():
        results["wall_s"] = time.perf_counter() - start
        with open(args.output, "w") as f:
            json.dump(results, f, indent=1)

    if args.tests:  # before this process touches the accelerator
        print(f"pytest {' '.join(args.tests)} ...", file=sys.stderr, flush=True)
        results["tests"] = run_tests(args.tests, args.backend, args.test_timeout)
        write()
    import keras
    import keras_hub

    results["device"], backend_version = device_and_versions(args.backend)
    results["versions"] = {
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        args.backend: backend_version,
    }
    write()
    benchmark(args, args.backend, results, write)
    write()
    print(table(results))
    print(f"wrote {args.output} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
