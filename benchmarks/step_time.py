"""Warm step time of one AdaSwitch `fit()` step on the tiny pair, per backend.

    python benchmarks/step_time.py [--steps 12] [--output docs/results/step_time.md]

Each backend runs in its own process on the same models, data and seed. The
median is over the steps after the first two (compilation and warm-up).
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

WORKER = """
import json, statistics, sys, time
import keras
import adaswitch_keras as ak

steps, batch_size = int(sys.argv[1]), int(sys.argv[2])
keras.utils.set_random_seed(0)
teacher = ak.tiny.causal_lm(num_layers=2, hidden_dim=64, sequence_length=64)
student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=64)
data = [{"prompts": f"Q: {i} + {i % 7} =", "responses": f" {i + i % 7}"} for i in range(steps * batch_size)]
distiller = ak.Distiller(teacher, student, strategy=ak.AdaSwitch(), max_new_tokens=32, seed=0)
distiller.compile(optimizer=keras.optimizers.AdamW(1e-4))

clock = ak.callbacks.StepTimer()
distiller.fit(data, batch_size=batch_size, epochs=1, verbose=0, callbacks=[clock])
print(json.dumps({"median_s": clock.median(), "first_s": clock.seconds[0], "warm_steps": len(clock.seconds[2:])}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--output", default=None, help="write a Markdown table here")
    args = parser.parse_args()
    rows = {}
    for backend in BACKENDS:
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", WORKER, str(args.steps), str(args.batch_size)],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.exit(f"{backend} failed:\n{done.stderr[-3000:]}")
        rows[backend] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{backend:>10}: {rows[backend]} ({time.perf_counter() - start:.0f} s in all)")
    table = [
        "| backend | warm step (median) | first step (compile) | warm steps |",
        "|---|---|---|---|",
    ] + [
        f"| {b} | {r['median_s'] * 1000:.1f} ms | {r['first_s']:.1f} s | {r['warm_steps']} |"
        for b, r in rows.items()
    ]
    text = "\n".join(table)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(
                "# Warm AdaSwitch step time on the tiny pair\n\n"
                "Teacher: Qwen2, 2 layers, hidden 64; student: 1 layer, hidden 32; "
                f"batch {args.batch_size}, sequence length 64, max_new_tokens 32, "
                f"AdaSwitch(window=5, k=2.0). Machine: {platform.processor() or platform.machine()}, "
                f"{os.cpu_count()} cores, no GPU. Commit: `{git_commit()}`.\n\n"
                f"Command: `python benchmarks/step_time.py --steps {args.steps} "
                f"--output {args.output}`\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
