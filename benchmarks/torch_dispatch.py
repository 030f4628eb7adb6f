"""Where the PyTorch backend's rollout time goes: Keras' per-op dispatch.

    python benchmarks/torch_dispatch.py --output docs/results/torch_dispatch

On the shipped arithmetic pair at `benchmarks/speed.py`'s batch (32), the
OnPolicy rollout (the student's prefill and cached decode, up to 48 tokens)
runs eagerly, as the torch backend runs it, in one process:

- its wall time, median of `--rounds`;
- what it dispatches per decode step, counted by cProfile: Keras ops (each
  `keras.ops` call checks its arguments with `any_symbolic_tensors` once),
  Keras layer calls (`Layer.__call__`), and calls into torch itself;
- the share of the profiled time spent inside torch's own functions;
- one op through `keras.ops` against the same op on torch directly, and a
  `keras.layers.Dense` call against `torch.nn.functional.linear`, at the
  student's decode shapes (batch 32, hidden 64), in microseconds.

What it shows is the cost of eager Keras on torch, not of this project's
code: the rollout calls KerasHub's `call_with_cache`, whose layers and ops
dispatch through Keras one by one (keras-team/keras#22561).
"""

import argparse
import cProfile
import importlib.metadata
import importlib.util
import json
import os
import platform
import pstats
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"  # this page is about the torch backend

from provenance import git_commit  # noqa: E402  (benchmarks/provenance.py)


def microseconds(function, repeats):
    """Median wall time of one call, over 5 blocks of `repeats` calls."""
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        blocks.append((time.perf_counter() - start) / repeats)
    return 1e6 * statistics.median(blocks)


def dispatch_costs(repeats):
    """One op and one dense layer, through Keras and on torch directly."""
    import keras
    import torch

    x = torch.randn(32, 64)
    y = torch.randn(32, 64)
    dense = keras.layers.Dense(256, use_bias=False)
    dense.build((32, 64))
    kernel = dense.kernel.value.detach()
    with torch.no_grad():
        return {
            "add: keras.ops": microseconds(lambda: keras.ops.add(x, y), repeats),
            "add: torch": microseconds(lambda: torch.add(x, y), repeats),
            "dense 64->256: keras.layers.Dense": microseconds(lambda: dense(x), repeats),
            "dense 64->256: torch F.linear": microseconds(
                lambda: torch.nn.functional.linear(x, kernel.T), repeats
            ),
        }


def transformers_decode(batch_size, prompt_length, new_tokens, rounds):
    """The same student in Transformers (`benchmarks/trl_gkd.py` builds it
    from the preset's config, random weights): `generate` of `new_tokens`
    tokens after `prompt_length`-token prompts, sampling; its wall time
    (median of `rounds`) and one profiled call's counts."""
    import torch
    from trl_gkd import build_model
    from trl_gkd import build_tokenizer
    from trl_gkd import generate_exactly

    tokenizer = build_tokenizer()
    model = build_model(
        "arithmetic-student", "sdpa", max(160, prompt_length + new_tokens), tokenizer.pad_token_id
    )
    prompts = torch.randint(0, len(tokenizer), (batch_size, prompt_length))

    def generate():
        generate_exactly(model, prompts, new_tokens)

    seconds = []
    for number in range(rounds + 1):  # the first warms up
        start = time.perf_counter()
        generate()
        if number:
            seconds.append(time.perf_counter() - start)
    profiler = cProfile.Profile()
    profiler.enable()
    generate()
    profiler.disable()
    stats = pstats.Stats(profiler)
    counts = profile_counts(stats, statistics.median(seconds))
    counts["model calls (prefill + decode steps)"] = new_tokens  # one forward per new token
    return counts


def profile_counts(stats, rollout_seconds):
    """Calls per rollout by kind, and torch's share of the profiled time."""
    keras_ops = layer_calls = torch_calls = decode_steps = 0
    torch_seconds = 0.0
    for (filename, _, name), (_, calls, own_seconds, _, _) in stats.stats.items():
        if name == "any_symbolic_tensors":
            keras_ops += calls
        elif name == "__call__" and filename.endswith(os.path.join("layers", "layer.py")):
            layer_calls += calls
        elif name == "call_with_cache" and "keras_hub" in filename:
            decode_steps += calls
        if filename == "~" and "torch" in name:  # built-in functions and tensor methods
            torch_calls += calls
            torch_seconds += own_seconds
    return {
        "model calls (prefill + decode steps)": decode_steps,
        "keras ops": keras_ops,
        "keras layer calls": layer_calls,
        "torch calls": torch_calls,
        "torch share of profiled time": torch_seconds / stats.total_tt,
        "python function calls": stats.total_calls,
        "profiled seconds": stats.total_tt,
        "unprofiled seconds": rollout_seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2000, help="calls per timed block")
    parser.add_argument("--output", default=None, help="a folder for README.md and results.json")
    args = parser.parse_args()

    import keras
    import keras_hub
    import numpy as np
    import torch

    import adaswitch_keras as ak
    from adaswitch_keras import presets

    teacher = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-teacher"))
    student = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-student"))
    distiller = ak.Distiller(
        teacher, student, strategy="on_policy", max_new_tokens=presets.MAX_NEW_TOKENS, seed=0
    )
    rows = ak.data.load("arithmetic", "train", limit=args.batch_size, **presets.TASK)
    stream, _ = distiller.pipeline.training_stream(rows, args.batch_size)
    batch = {k: keras.ops.convert_to_tensor(np.asarray(v)) for k, v in next(iter(stream)).items()}

    seconds = []
    with torch.no_grad():
        for number in range(args.rounds + 1):  # the first warms up
            start = time.perf_counter()
            out = distiller.rollout(batch)
            if number:
                seconds.append(time.perf_counter() - start)
        profiler = cProfile.Profile()
        profiler.enable()
        distiller.rollout(batch)
        profiler.disable()
    counts = profile_counts(pstats.Stats(profiler), statistics.median(seconds))
    columns = int(keras.ops.convert_to_numpy(out["response_mask"]).sum(1).max())
    results = {
        "commit": git_commit(),
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "torch": torch.__version__,
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(),
        "settings": vars(args),
        "rollout_seconds": seconds,
        "response_columns": columns,
        "counts": counts,
        "dispatch_microseconds": dispatch_costs(args.repeats),
    }
    if importlib.util.find_spec("transformers") is not None:
        prompt = keras.ops.convert_to_numpy(batch["padding_mask"] & ~batch["response_mask"])
        results["transformers"] = transformers_decode(
            args.batch_size, round(float(prompt.sum(1).mean())), columns, args.rounds
        )
        results["versions"]["transformers"] = importlib.metadata.version("transformers")
    page = report(results)
    print(page)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(args.output, "README.md"), "w") as f:
            f.write(page)


def report(results):
    costs = results["dispatch_microseconds"]
    sides = {"ours (Keras, KerasHub)": dict(results["counts"])}
    sides["ours (Keras, KerasHub)"]["wall"] = statistics.median(results["rollout_seconds"])
    if "transformers" in results:
        sides["Transformers `generate`"] = dict(results["transformers"])
        sides["Transformers `generate`"]["wall"] = results["transformers"]["unprofiled seconds"]

    def per_call(side, value):
        return value / side["model calls (prefill + decode steps)"]

    rows = {
        "wall time per model call (ms)": lambda c: f"{1000 * per_call(c, c['wall']):.1f}",
        "model calls": lambda c: f"{c['model calls (prefill + decode steps)']}",
        "Python function calls per model call": lambda c: (
            f"{per_call(c, c['python function calls']):,.0f}"
        ),
        "calls into torch per model call": lambda c: f"{per_call(c, c['torch calls']):,.0f}",
        "time inside torch's functions per model call (ms, profiled)": lambda c: (
            f"{1000 * per_call(c, c['torch share of profiled time'] * c['profiled seconds']):.1f}"
        ),
        "Keras op dispatches per model call": lambda c: f"{per_call(c, c['keras ops']):.0f}",
        "Keras layer calls per model call": lambda c: f"{per_call(c, c['keras layer calls']):.0f}",
    }
    ours = sides["ours (Keras, KerasHub)"]
    op_extra = costs["add: keras.ops"] - costs["add: torch"]
    layer_extra = (
        costs["dense 64->256: keras.layers.Dense"] - costs["dense 64->256: torch F.linear"]
    )
    dispatch_ms = (
        per_call(ours, ours["keras ops"] * op_extra + ours["keras layer calls"] * layer_extra)
        / 1000
    )
    lines = [
        "# Where the PyTorch rollout's time goes",
        "",
        "Generated by `benchmarks/torch_dispatch.py` from [results.json](results.json); "
        "do not edit by hand.",
        "",
        f"- Commit `{results['commit']}`; {results['machine']}, torch threads "
        f"{results['torch_threads']}; "
        + ", ".join(f"{k} {v}" for k, v in results["versions"].items()),
        f"- The shipped arithmetic student, batch {results['settings']['batch_size']}, "
        f"{results['response_columns']} new tokens, sampling, eager torch without gradients: "
        "our OnPolicy rollout (its prefill and cached decode through KerasHub's "
        "`call_with_cache`) and Transformers' `generate` of a Qwen2 of the same shapes. "
        "Wall times are medians of "
        f"{len(results['rollout_seconds'])} runs; counts come from one run under cProfile "
        "(which slows Python, so profiled times are only compared with each other).",
        "",
        "| per model call | " + " | ".join(sides) + " |",
        "|---|" + "---|" * len(sides),
        *(
            f"| {name} | " + " | ".join(cell(side) for side in sides.values()) + " |"
            for name, cell in rows.items()
        ),
        "",
        "One dispatch, microseconds (median of 5 blocks of "
        f"{results['settings']['repeats']} calls, batch 32, hidden 64):",
        "",
        "| call | us |",
        "|---|---|",
        *(f"| {name} | {value:.1f} |" for name, value in costs.items()),
        "",
        f"Reading: one decode step of this 2-layer model makes "
        f"{per_call(ours, ours['keras ops']):.0f} Keras op dispatches and "
        f"{per_call(ours, ours['keras layer calls']):.0f} layer calls. At the microbenchmarks' "
        f"extra cost ({op_extra:.1f} us per op, {layer_extra:.0f} us per `Dense` call, the "
        f"cheapest case), that is about {dispatch_ms:.1f} ms of its "
        f"{1000 * per_call(ours, ours['wall']):.1f} ms; the Python and torch calls per step "
        "in the table show the rest of the gap. Closing it would take fewer dispatches per "
        "token: another implementation of the models' decode step than KerasHub's "
        "`call_with_cache`, or a cheaper dispatch in Keras (keras-team/keras#22561).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
