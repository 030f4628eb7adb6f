"""The rollout of another git revision against the working tree's, side by
side: the same batches, the same seeds, rounds interleaved; the written
sequences must be equal, and the time ratio is the median of per-round
ratios (this machine's speed drifts, so only ratios within a run count).

    KERAS_BACKEND=jax python benchmarks/rollout_ab.py --revision HEAD~1

A refactor of `rollout.py` shows here that it keeps decisions and speed.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
STRATEGIES = ("OnPolicy", "SKD(top_k=5)", "Switch(tau0=0.2, decay=0.05)", "AdaSwitch(L=5, K=2)")


def load_revision(revision):
    """`adaswitch_keras/rollout.py` as it was at `revision`, as a module."""
    source = subprocess.run(
        ["git", "show", f"{revision}:adaswitch_keras/rollout.py"],
        cwd=os.path.dirname(HERE),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "rollout_at_revision.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("rollout_at_revision", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revision", default="HEAD")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (2 more compile)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import keras
    import keras_hub
    import numpy as np
    from keras import ops
    from speed import compiled
    from speed import strategies

    import adaswitch_keras as ak
    from adaswitch_keras import presets

    MAKERS = strategies()

    teacher = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-teacher"))
    student = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-student"))
    rows = ak.data.load(
        "arithmetic", "train", limit=args.batch_size * (args.rounds + 2), **presets.TASK
    )
    old = load_revision(args.revision)
    versions = {"old": old.rollout, "new": ak.rollout}
    runs, seeds = {}, {}
    for name in STRATEGIES:
        distiller = ak.Distiller(
            teacher, student, strategy=MAKERS[name](), max_new_tokens=presets.MAX_NEW_TOKENS
        )
        seeds[name] = distiller.seed_generator

        def run(batch, rollout, distiller=distiller):
            sampler = lambda who: getattr(distiller, f"{who}_sampler")  # noqa: E731
            return rollout(
                batch,
                student=student,
                teacher=teacher,
                strategy=distiller.strategy,
                vocabulary_size=distiller.vocabulary_size,
                end_token_id=distiller.packer.end_token_id,
                pad_token_id=distiller.packer.pad_token_id,
                max_new_tokens=distiller.max_new_tokens,
                student_sampler=sampler("student"),
                teacher_sampler=sampler("teacher"),
                seed=distiller.seed_generator,
                draft_length=distiller.draft_length,
                keep_teacher_logits=True,
            )

        for version, rollout in versions.items():
            runs[name, version] = compiled(
                lambda batch, run=run, rollout=rollout: run(batch, rollout), distiller
            )
    batches = [
        {k: np.asarray(v) for k, v in b.items()}
        for b in distiller.make_dataset(rows, args.batch_size).take(args.rounds + 2)
    ]
    seconds = {key: [] for key in runs}
    for number, batch in enumerate(batches):
        for name in STRATEGIES:
            outputs = {}
            for version in ("old", "new") if number % 2 else ("new", "old"):
                seeds[name].state.assign(np.array([number, 7]))  # the same draws for both
                start = time.perf_counter()
                out = runs[name, version](batch)
                outputs[version] = {k: ops.convert_to_numpy(v) for k, v in out.items()}
                if number >= 2:
                    seconds[name, version].append(time.perf_counter() - start)
            for key in ("token_ids", "response_mask", "teacher_token_mask", "switch_index"):
                if not np.array_equal(outputs["old"][key], outputs["new"][key]):
                    raise SystemExit(
                        f"{name}: {key} differs between {args.revision} and the working tree"
                    )
        print(f"round {number + 1}/{len(batches)}", file=sys.stderr, flush=True)
    result = {
        "backend": keras.config.backend(),
        "revision": subprocess.run(
            ["git", "rev-parse", args.revision], capture_output=True, text=True
        ).stdout.strip(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "milliseconds": {
            name: {
                version: 1000 * statistics.median(seconds[name, version])
                for version in ("old", "new")
            }
            for name in STRATEGIES
        },
        "new_over_old": {
            name: statistics.median(
                n / o for n, o in zip(seconds[name, "new"], seconds[name, "old"])
            )
            for name in STRATEGIES
        },
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
