"""Peak memory of one training step at a real vocabulary, with and without
`loss_chunk_size`.

    python benchmarks/chunked_loss_memory.py --output docs/results/chunked_loss_memory
    python benchmarks/chunked_loss_memory.py --smoke

A tiny Qwen2 teacher (2 layers, hidden 128) and student (2 layers, hidden 64)
over a 151,936-token vocabulary (`tiny.tokenizer("qwen2", size=151936)`,
Qwen2's size), batch 8, sequences of 512 tokens (256 of prompt, 256 of
response), float32. Each (backend, strategy, chunk size) runs in its own
process: it builds the models and a batch, then takes two steps (the first
compiles); step memory is the process's peak resident memory (VmHWM) during
the two steps above its resident memory just before them (freed memory
stays resident, so a second step alone would show only what the first did
not leave behind). Step time is the second step's. The models are this small so that
the logits dominate, as they do for a 0.5B student with this vocabulary.
The two paths' losses must agree (printed; `rtol` 1e-4 asserted).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from provenance import git_commit  # benchmarks/provenance.py

BACKENDS = ("jax", "tensorflow", "torch")


def _status(field):
    """A /proc/self/status field in MiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak():
    """Linux resets VmHWM to the current RSS when "5" is written here."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(args):
    import keras
    import numpy as np

    import adaswitch_keras as ak

    keras.utils.set_random_seed(0)
    tokenizer = ak.tiny.tokenizer("qwen2", size=args.vocabulary_size)
    length = 2 * args.half_length
    teacher = ak.tiny.causal_lm(
        tokenizer=tokenizer, num_layers=2, hidden_dim=128, intermediate_dim=256,
        sequence_length=length,
    )  # fmt: skip
    student = ak.tiny.causal_lm(
        tokenizer=tokenizer, num_layers=2, hidden_dim=64, intermediate_dim=128,
        sequence_length=length,
    )  # fmt: skip
    distiller = ak.Distiller(
        teacher,
        student,
        strategy=args.strategy,
        max_new_tokens=args.half_length,
        seed=0,
        loss_chunk_size=args.chunk or None,
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    digits = "0123456789" * (args.half_length // 5)  # one token per character
    rows = [
        {"prompts": digits[i : i + args.half_length - 1], "responses": digits[: args.half_length]}
        for i in range(args.batch_size)
    ]
    batch = {k: np.asarray(v) for k, v in next(iter(distiller.make_dataset(rows, args.batch_size))).items()}  # fmt: skip
    before = _status("VmRSS")
    _reset_peak()
    distiller.train_on_batch(batch)  # compiles
    start = time.perf_counter()
    logs = distiller.train_on_batch(batch, return_dict=True)
    return {
        "backend": keras.config.backend(),
        "strategy": args.strategy,
        "loss_chunk_size": args.chunk or None,
        "shape": list(batch["token_ids"].shape),
        "vocabulary_size": distiller.vocabulary_size,
        "step_mib": _status("VmHWM") - before,
        "resident_before_mib": before,
        "step_seconds": time.perf_counter() - start,
        "loss": float(logs["loss"]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--strategies", default="supervised_kd")
    parser.add_argument("--chunk-sizes", default="0,128", help="0: the plain path")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--half-length", type=int, default=256)
    parser.add_argument("--vocabulary-size", type=int, default=151936)
    parser.add_argument("--smoke", action="store_true", help="JAX, batch 2, 32 + 32 tokens")
    parser.add_argument("--output", help="folder for results.json and README.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.smoke:
        args.backends, args.batch_size, args.half_length, args.chunk_sizes = "jax", 2, 32, "0,16"

    runs = []
    for backend in args.backends.split(","):
        for strategy in args.strategies.split(","):
            for chunk in args.chunk_sizes.split(","):
                command = [sys.executable, __file__, "--worker", "--strategy", strategy]
                command += ["--chunk", chunk, "--batch-size", str(args.batch_size)]
                command += ["--half-length", str(args.half_length)]
                command += ["--vocabulary-size", str(args.vocabulary_size)]
                env = {**os.environ, "KERAS_BACKEND": backend}
                out = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
                if out.returncode:
                    runs.append({"backend": backend, "strategy": strategy, "loss_chunk_size":
                                 int(chunk) or None, "error": f"exit code {out.returncode}"})  # fmt: skip
                else:
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)

    lines = [
        "# Peak memory of a training step, plain and chunked loss",
        "",
        f"Written by `python benchmarks/chunked_loss_memory.py` at commit `{git_commit()}`, "
        f"{platform.machine()}, {os.cpu_count()} CPU cores. Step memory: peak resident memory "
        "during the first two steps above the resident memory just before them.",
        "",
        "| backend | strategy | batch x length | loss_chunk_size | step memory (MiB) | "
        "plain / chunked | loss | step (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        plain = next(
            (r for r in runs if r["backend"] == run["backend"] and r["strategy"] ==
             run["strategy"] and r["loss_chunk_size"] is None and "error" not in r), None,
        )  # fmt: skip
        if "error" in run:
            lines.append(f"| {run['backend']} | {run['strategy']} | | {run['loss_chunk_size']} | "
                         f"{run['error']} | | | |")  # fmt: skip
            continue
        ratio = f"{plain['step_mib'] / run['step_mib']:.1f}x" if plain else ""
        if plain:
            assert abs(run["loss"] - plain["loss"]) <= 1e-4 * abs(plain["loss"]), (run, plain)
        lines.append(
            f"| {run['backend']} | {run['strategy']} | {run['shape'][0]} x {run['shape'][1]} | "
            f"{run['loss_chunk_size'] or 'None (plain)'} | {run['step_mib']:,.0f} | {ratio} | "
            f"{run['loss']:.6f} | {run['step_seconds']:.1f} |"
        )
    page = "\n".join(lines) + "\n"
    print(page)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        with open(os.path.join(args.output, "README.md"), "w") as f:
            f.write(page)
        with open(os.path.join(args.output, "results.json"), "w") as f:
            settings = {k: v for k, v in vars(args).items() if k not in ("worker", "output")}
            json.dump({"commit": git_commit(), "settings": settings, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
