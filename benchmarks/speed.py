"""How fast the machinery is: every strategy's step against OnPolicy's,
AdaSwitch against its floor and SKD, rollouts against KerasHub `generate`,
and our on-policy step, part by part, against TRL's `GKDTrainer`.

    python benchmarks/speed.py --output docs/results/speed.md
    python benchmarks/speed.py --quick      # JAX and TRL, < 10 min
    python benchmarks/speed.py --smoke      # CI: runs, writes, no TRL

Each backend runs in its own process on the shipped arithmetic teacher and
student, one batch of the presets' task per round (from the stream `fit`
makes, cut to the columns the rows use), the learning rate at 0 so that every round sees the
same models. A round takes one step of every strategy side by side; ratios
are medians of the per-round ratios.

AdaSwitch's floor is the work no rollout can avoid for the sequences its
step wrote (the same rollout, replayed from the step's seed), each model's
work on each column counted once and each part timed alone (`Floor.times`):
the student's prefill and cached decode of the columns it wrote; the
teacher's prefill and parallel scoring of the student's columns before the
first column it wrote, then its cached decode of the rest; and the same
gradient step on the finished batch. Timed alone, each part pays its own
call's overhead and none overlaps another, so their sum is not a lower
bound on a step that runs them in one compiled program: a ratio below 1
says the step costs less than its parts called one by one.

TRL (`benchmarks/trl_gkd.py`, `pip install -e '.[trl]'`; Transformers models
of the same shapes, torch CPU) runs in its own process after ours, decoding as many tokens per step as
our on-policy rollout did, whole and part by part; `onpolicy_over_trl` is
the ratio of JAX's median on-policy step and TRL's. The last line of
the output is

    adaswitch_over_floor=R1 adaswitch_over_onpolicy=R2 adaswitch_over_skd=R3 onpolicy_over_trl=R4
"""

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from provenance import git_commit  # benchmarks/provenance.py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
BACKENDS = ("jax", "tensorflow", "torch")


def strategies():
    """Name -> a new strategy: the strategies whose steps this page times."""
    import adaswitch_keras as ak

    return {
        "SFT": ak.SFT,
        "SupervisedKD": ak.SupervisedKD,
        "SeqKD": ak.SeqKD,
        "OnPolicy": ak.OnPolicy,
        "GKD(lmbda=0.5)": lambda: ak.GKD(lmbda=0.5),
        "SKD(top_k=5)": lambda: ak.SKD(top_k=5),
        "Switch(tau0=0.2, decay=0.05)": lambda: ak.Switch(tau0=0.2, decay=0.05),
        "AdaSwitch(L=5, K=2)": lambda: ak.AdaSwitch(window=5, k=2.0),
    }


SMOKE_STRATEGIES = [
    "OnPolicy",
    "SKD(top_k=5)",
    "AdaSwitch(L=5, K=2)",
]  # what the closing line needs


def worker(args):
    """One backend: step times, floor, rollout throughput, teacher calls."""
    import keras
    import keras_hub
    import numpy as np
    from keras import ops

    import adaswitch_keras as ak
    from adaswitch_keras import presets

    backend = keras.config.backend()
    table = strategies()
    teacher = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-teacher"))
    student = keras_hub.models.CausalLM.from_preset(presets.path("arithmetic-student"))
    rows = ak.data.load(
        "arithmetic", "train", limit=args.batch_size * (args.rounds + 2), **presets.TASK
    )

    def distiller(strategy, **kwargs):
        model = ak.Distiller(
            teacher,
            student,
            strategy=strategy,
            max_new_tokens=presets.MAX_NEW_TOKENS,
            seed=0,
            **kwargs,
        )
        model.compile(optimizer=keras.optimizers.SGD(0.0))  # the same models every round
        return model

    names = SMOKE_STRATEGIES if args.smoke or args.quick else list(table)
    distillers = {name: distiller(table[name]()) for name in names}
    sweep = {}  # draft lengths, side by side in the same rounds (JAX only: compiling is cheap there)
    if backend == "jax" and args.draft_sweep:
        for name in ("AdaSwitch(L=5, K=2)", "SKD(top_k=5)", "Switch(tau0=0.2, decay=0.05)"):
            for length in (1, 2, 4, 8):
                sweep[f"{name} draft={length}"] = distiller(table[name](), draft_length=length)
    any_distiller = distillers["AdaSwitch(L=5, K=2)"]
    stream, _ = any_distiller.pipeline.training_stream(rows, args.batch_size)  # as `fit` cuts it
    batches = [{k: np.asarray(v) for k, v in b.items()} for b in stream.take(args.rounds + 2)]
    prompt_length = float(
        np.mean((batches[0]["padding_mask"] & ~batches[0]["response_mask"]).sum(1))
    )

    def timed(function, *inputs):
        start = time.perf_counter()
        result = function(*inputs)
        ops.convert_to_numpy(keras.tree.flatten(result)[0])  # wait for the result
        return time.perf_counter() - start, result

    floor = Floor(teacher, student, any_distiller, compiled)
    adaswitch, replay = distillers["AdaSwitch(L=5, K=2)"], distiller(ak.AdaSwitch())
    rollouts = {
        name: compiled(distillers[name].rollout, distillers[name])
        for name in ("OnPolicy", "AdaSwitch(L=5, K=2)")
    }
    replay_rollout = compiled(replay.rollout, replay)
    generate = {}  # token ids in, token ids out: no preprocessor
    for who, model in (("student", student), ("teacher", teacher)):
        generate[who] = type(model)(backbone=model.backbone, preprocessor=None)
        generate[who].compile(sampler="random")

    def generate_inputs(batch):
        prompt = batch["padding_mask"] & ~batch["response_mask"]
        return {"token_ids": np.where(prompt, batch["token_ids"], 0), "padding_mask": prompt}

    rounds = []
    for number, batch in enumerate(batches):
        row = {"steps": {}}
        for name, model in distillers.items():
            if model is adaswitch:
                seed_state = ops.convert_to_numpy(model.seed_generator.state)
            row["steps"][name], _ = timed(model.train_on_batch, batch)
        row["sweep"] = {
            name: timed(model.train_on_batch, batch)[0] for name, model in sweep.items()
        }
        replay.seed_generator.state.assign(seed_state)  # the sequences AdaSwitch's step wrote
        written = {k: ops.convert_to_numpy(v) for k, v in replay_rollout(batch).items()}
        row["floor"] = floor.times(written, timed)
        row["switch_rate"] = float(written["teacher_token_mask"].any(1).mean())
        for name, rollout in rollouts.items():
            seconds, out = timed(rollout, batch)
            row[f"rollout_tokens_per_s {name}"] = (
                float(ops.convert_to_numpy(out["response_mask"]).sum()) / seconds
            )
            row[f"rollout_columns {name}"] = int(
                ops.convert_to_numpy(out["response_mask"]).sum(1).max()
            )
            if name == "OnPolicy":
                onpolicy_written = {k: ops.convert_to_numpy(v) for k, v in out.items()}
                row["onpolicy_parts"] = floor.times(onpolicy_written, timed)
                row["onpolicy_floor"] = sum(row["onpolicy_parts"].values())
        for who, model in generate.items():
            inputs = generate_inputs(batch)
            seconds, out = timed(
                lambda x, model=model: model.generate(x, stop_token_ids=None), inputs
            )
            tokens = float(np.asarray(out["padding_mask"]).sum() - inputs["padding_mask"].sum())
            row[f"generate_tokens_per_s {who}"] = tokens / seconds
        if number >= 2:  # the first two rounds compile
            rounds.append(row)
        print(f"{backend}: round {number + 1}/{len(batches)}", file=sys.stderr, flush=True)

    calls = {name: teacher_calls(model, teacher, batches[0]) for name, model in distillers.items()}
    return {
        "backend": backend,
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            backend: importlib.import_module(backend).__version__,
        },
        "batch_size": args.batch_size,
        "sequence_length": int(batches[0]["token_ids"].shape[1]),
        "prompt_length_mean": prompt_length,
        "max_new_tokens": presets.MAX_NEW_TOKENS,
        "draft_length": {name: model.draft_length for name, model in distillers.items()},
        "rounds": rounds,
        "teacher_calls_per_step": calls,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parameters": {"teacher": teacher.count_params(), "student": student.count_params()},
    }


def compiled(function, *models):
    """`function` compiled the way the Distiller's steps are on this backend:
    jax.jit over the models' variables, tf.function, or eager torch."""
    import keras

    backend = keras.config.backend()
    if backend == "jax":
        import jax

        variables = [v for model in models for v in model.variables]

        def stateless(values, *inputs):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return function(*inputs)

        jitted = jax.jit(stateless)
        return lambda *inputs: jitted([v.value for v in variables], *inputs)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)
    import torch

    def no_grad(*inputs):
        with torch.no_grad():
            return function(*inputs)

    return no_grad


class Floor:
    """The parts of a step that no rollout can avoid, each model's work on
    each column counted once, each part timed alone (`times`)."""

    def __init__(self, teacher, student, distiller, compiled):
        from keras import ops

        import adaswitch_keras as ak

        self.ops = ops
        self.teacher, self.student = teacher, student
        self.run = {
            name: compiled(lambda *x, model=model: self._run(model, *x), model)
            for name, model in (("student", student), ("teacher", teacher))
        }
        self.forward = compiled(lambda x: teacher(x)[..., : distiller.vocabulary_size], teacher)
        self.empty_caches = {}

        class GradientStepOnly(ak.Distiller):
            def rollout(self, inputs, keep_teacher_logits=False):
                return inputs  # the batch is written already

        self.gradient = GradientStepOnly(
            teacher, student, strategy=ak.AdaSwitch(), max_new_tokens=distiller.max_new_tokens
        )
        self.gradient.compile(optimizer=type(distiller.optimizer.inner_optimizer)(0.0))

    def _run(self, model, prefix, tokens, cache, stop):
        """One parallel call over the `prefix` columns, then one cached call
        per column up to `stop`: the logits of columns 1 .. `stop`."""
        ops = self.ops
        logits, _, cache = model.call_with_cache(prefix, cache, 0)
        checksum = ops.sum(ops.argmax(logits, axis=-1))  # keeps the logits alive

        def body(index, cache, checksum):
            previous = ops.slice(tokens, [0, index], [ops.shape(tokens)[0], 1])
            logits, _, cache = model.call_with_cache(previous, cache, index)
            return index + 1, cache, checksum + ops.sum(ops.argmax(logits, axis=-1))

        start = ops.convert_to_tensor(ops.shape(prefix)[1], "int32")
        return ops.while_loop(lambda i, c, s: i < stop, body, (start, cache, checksum))[2]

    def timed_run(self, name, tokens, parallel, stop, timed):
        """`_run` on columns [0, parallel) at once, then [parallel, stop) one
        by one; the parallel part's shape changes per batch, so one untimed
        call compiles it first (and is waited for: JAX dispatches
        asynchronously, and an unfinished call would be timed too)."""
        import numpy as np

        model = {"student": self.student, "teacher": self.teacher}[name]
        if name not in self.empty_caches:
            self.empty_caches[name] = self.ops.zeros_like(model._build_cache(tokens)[1])
        inputs = (tokens[:, :parallel], tokens, self.empty_caches[name], np.int32(stop))
        timed(self.run[name], *inputs)
        return timed(self.run[name], *inputs)[0]

    def times(self, written, timed):
        """Seconds of each part for the sequences `written`:

        - student: its prefill up to the shortest prompt, then a cached
          decode of every column up to the last one it wrote;
        - teacher: one parallel call over the prompts and the student's
          columns before the first column the teacher wrote, then a cached
          decode of the rest (a plain forward over all columns when it
          wrote none): it scores or writes every response column once;
        - the gradient step on the finished batch (teacher logits given).
        """
        import numpy as np

        ops = self.ops
        tokens = written["token_ids"].astype("int32")
        prompt = written["padding_mask"] & ~written["response_mask"]
        by_student = written["response_mask"] & ~written["teacher_token_mask"]
        first = int(max(prompt.sum(1).min(), 1))
        last = int(np.flatnonzero(written["response_mask"].any(0)).max())
        seconds = {"student decode": 0.0}
        if by_student.any():
            last_by_student = int(np.flatnonzero(by_student.any(0)).max())
            seconds["student decode"] = self.timed_run(
                "student", tokens, first, last_by_student, timed
            )
        teacher_columns = np.flatnonzero(written["teacher_token_mask"].any(0))
        inputs = {"token_ids": tokens, "padding_mask": written["padding_mask"]}
        if len(teacher_columns):  # a cache to decode from
            seconds["teacher prefill+score+decode"] = self.timed_run(
                "teacher", tokens, int(teacher_columns.min()), last, timed
            )
        else:  # scoring alone: a plain forward, cheaper than filling a cache
            timed(self.forward, inputs)  # compiles; waited for, as in `timed_run`
            seconds["teacher prefill+score+decode"] = timed(self.forward, inputs)[0]
        logits = ops.convert_to_numpy(self.forward(inputs))
        kept = np.concatenate(
            [np.zeros_like(logits[:, :1]), logits[:, :-1]], axis=1
        )  # column c: logits for token c
        batch = {
            **written,
            "teacher_logits": np.where(written["response_mask"][..., None], kept, 0.0),
        }
        seconds["gradient step"], _ = timed(self.gradient.train_on_batch, batch)
        return seconds


def teacher_calls(distiller, teacher, batch):
    """Teacher forward calls in one step: cached calls in an eager rollout
    (JAX with jit off runs the loops in Python) and the loss's forward."""
    import keras

    count = {"calls": 0}
    call_with_cache = teacher.call_with_cache

    def counting(*args, **kwargs):
        count["calls"] += 1
        return call_with_cache(*args, **kwargs)

    teacher.call_with_cache = counting
    try:
        if keras.config.backend() == "jax":
            import jax

            with jax.disable_jit():
                out = distiller.rollout(batch, distiller.reuse_teacher_logits)
        else:
            out = distiller.rollout(batch, distiller.reuse_teacher_logits)
    finally:
        del teacher.call_with_cache
    return count["calls"] + int("teacher_logits" not in out)


def summarize(results, trl):
    """The Markdown page and the closing line."""

    def median(values):
        return statistics.median(values)

    def step_ratio(result, name, over):
        return median([r["steps"][name] / r["steps"][over] for r in result["rounds"]])

    def floor_ratio(result):
        return median(
            [r["steps"]["AdaSwitch(L=5, K=2)"] / sum(r["floor"].values()) for r in result["rounds"]]
        )

    first = results[0]
    names = list(first["rounds"][0]["steps"])
    lines = [
        "# Speed: the rollout machinery against its floor, the paper's ratios and TRL",
        "",
        f"Written by `python benchmarks/speed.py` at commit `{git_commit()}` on "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores: the shipped arithmetic teacher "
        f"({first['parameters']['teacher']:,} parameters) and student ({first['parameters']['student']:,}), "
        f"batch {first['batch_size']}, prompts of {first['prompt_length_mean']:.1f} tokens on average, "
        f"up to {first['max_new_tokens']} new tokens, draft lengths as the strategies set them "
        f"(AdaSwitch {first['draft_length']['AdaSwitch(L=5, K=2)']}, SKD {first['draft_length']['SKD(top_k=5)']}), "
        f"{len(first['rounds'])} warm rounds per backend (medians).",
        "",
        "## Step time relative to OnPolicy",
        "",
        "| strategy | " + " | ".join(r["backend"] for r in results) + " | teacher calls per step |",
        "|---|" + "---|" * (len(results) + 1),
    ]
    for name in names:
        cells = [f"{step_ratio(r, name, 'OnPolicy'):.2f}x" for r in results]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {first['teacher_calls_per_step'][name]} |"
        )
    lines.append(
        "| OnPolicy step (ms) | "
        + " | ".join(
            f"{1000 * median([r['steps']['OnPolicy'] for r in res['rounds']]):.0f}"
            for res in results
        )
        + " | |"
    )
    lines += [
        "",
        "## AdaSwitch against its floor and SKD (paper: 1.3x OnPolicy, 0.9x SKD)",
        "",
        "The floor: the parts of AdaSwitch's step on the sequences it wrote, each model's "
        "work on each column counted once, each part timed alone (`Floor.times`). Alone, "
        "each part pays its own call's overhead and none overlaps another, so the sum is not "
        "a lower bound on a step that runs them in one compiled program.",
        "",
        "| | " + " | ".join(r["backend"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    rows = {
        "AdaSwitch / floor": lambda r: f"{floor_ratio(r):.2f}",
        "AdaSwitch / OnPolicy": lambda r: f"{step_ratio(r, 'AdaSwitch(L=5, K=2)', 'OnPolicy'):.2f}",
        "AdaSwitch / SKD": lambda r: f"{step_ratio(r, 'AdaSwitch(L=5, K=2)', 'SKD(top_k=5)'):.2f}",
        "floor / OnPolicy (what the sizes imply)": lambda r: (
            f"{median([sum(x['floor'].values()) / x['steps']['OnPolicy'] for x in r['rounds']]):.2f}"
        ),
        "AdaSwitch switch rate": lambda r: f"{median([x['switch_rate'] for x in r['rounds']]):.2f}",
    }
    for part in first["rounds"][0]["floor"]:
        rows[f"floor: {part} (ms)"] = lambda r, part=part: (
            f"{1000 * median([x['floor'][part] for x in r['rounds']]):.1f}"
        )
    rows["AdaSwitch step (ms)"] = lambda r: (
        f"{1000 * median([x['steps']['AdaSwitch(L=5, K=2)'] for x in r['rounds']]):.1f}"
    )
    for label, cell in rows.items():
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    lines += [
        "",
        "## Rollout throughput (response tokens per second)",
        "",
        "| | " + " | ".join(r["backend"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for key in (
        "rollout_tokens_per_s AdaSwitch(L=5, K=2)",
        "rollout_tokens_per_s OnPolicy",
        "generate_tokens_per_s student",
        "generate_tokens_per_s teacher",
    ):
        lines.append(
            f"| {key.replace('_tokens_per_s', '')} | "
            + " | ".join(f"{median([x[key] for x in r['rounds']]):,.0f}" for r in results)
            + " |"
        )
    for who in ("student", "teacher"):
        lines.append(
            f"| AdaSwitch rollout / {who} generate | "
            + " | ".join(
                f"{median([x['rollout_tokens_per_s AdaSwitch(L=5, K=2)'] / x[f'generate_tokens_per_s {who}'] for x in r['rounds']]):.2f}"
                for r in results
            )
            + " |"
        )
    lines.append(
        "| peak memory (RSS, MiB) | "
        + " | ".join(f"{r['peak_rss_mib']:,.0f}" for r in results)
        + " |"
    )

    swept = [r for r in results if r["rounds"][0]["sweep"]]
    if swept:
        result = swept[0]
        names = list(result["rounds"][0]["sweep"])
        lines += [
            "",
            f"## Draft length ({result['backend']}, step time relative to OnPolicy, same rounds)",
            "",
            "| strategy | " + " | ".join(n.split(" draft=")[1] for n in names[:4]) + " |",
            "|---|" + "---|" * 4,
        ]
        for start in range(0, len(names), 4):
            cells = [
                f"{median([x['sweep'][n] / x['steps']['OnPolicy'] for x in result['rounds']]):.2f}x"
                for n in names[start : start + 4]
            ]
            lines.append(f"| {names[start].split(' draft=')[0]} | " + " | ".join(cells) + " |")
    jax_result = next((r for r in results if r["backend"] == "jax"), first)
    onpolicy_over_trl = float("nan")
    lines += ["", "## Against TRL's GKDTrainer (on-policy, lmbda=1)", ""]
    if trl is None:
        lines.append("TRL was not run (`trl` and `transformers` are not installed, or `--smoke`).")
    else:
        ours = median([x["steps"]["OnPolicy"] for x in jax_result["rounds"]])
        onpolicy_over_trl = ours / trl["median_step_seconds"]
        lines += [
            f"TRL {trl['trl_version']}, Transformers {trl['transformers_version']}, torch CPU: "
            f"{1000 * trl['median_step_seconds']:.0f} ms per on-policy step "
            f"({trl['max_new_tokens']} new tokens, as many as our on-policy rollouts decoded).",
            "",
            "| ours | step (ms) | / TRL on-policy |",
            "|---|---|---|",
        ]
        for result in results:
            for name in ("OnPolicy", "AdaSwitch(L=5, K=2)"):
                step = median([x["steps"][name] for x in result["rounds"]])
                lines.append(
                    f"| {result['backend']} {name} | {1000 * step:.0f} | {step / trl['median_step_seconds']:.2f} |"
                )
            step = median([x["onpolicy_floor"] for x in result["rounds"]])
            lines.append(
                f"| {result['backend']} OnPolicy floor | {1000 * step:.0f} | {step / trl['median_step_seconds']:.2f} |"
            )
        lines += [
            "",
            "The OnPolicy floor is the sum of the parts of an on-policy step, each timed alone "
            "(below), each model's work on each column counted once. Alone, each part pays "
            "its own call's overhead; the step runs them in one compiled program, so it can "
            "cost less than this sum.",
            "",
            "### The same parts, side by side (ms, medians)",
            "",
            "TRL's parts are Transformers calls at the same shapes "
            "(`trl_gkd.transformers_parts_seconds`): the student's `generate`, a teacher "
            "forward without gradients, the student's forward, loss, backward and AdamW step.",
            "",
            "| part | " + " | ".join(r["backend"] for r in results) + " | TRL / Transformers |",
            "|---|" + "---|" * (len(results) + 1),
        ]
        parts = {
            "student generation": ("student decode", "student generate"),
            "teacher forward": ("teacher prefill+score+decode", "teacher forward"),
            "gradient step": ("gradient step", "gradient step"),
        }
        for label, (ours, theirs) in parts.items():
            cells = [
                f"{1000 * median([x['onpolicy_parts'][ours] for x in r['rounds']]):.0f}"
                for r in results
            ]
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {1000 * trl['parts'][theirs]:.0f} |"
            )
        cells = [
            f"{1000 * median([x['steps']['OnPolicy'] for x in r['rounds']]):.0f}" for r in results
        ]
        lines.append(
            "| whole on-policy step | "
            + " | ".join(cells)
            + f" | {1000 * trl['median_step_seconds']:.0f} |"
        )
    closing = (
        f"adaswitch_over_floor={floor_ratio(jax_result):.2f} "
        f"adaswitch_over_onpolicy={step_ratio(jax_result, 'AdaSwitch(L=5, K=2)', 'OnPolicy'):.2f} "
        f"adaswitch_over_skd={step_ratio(jax_result, 'AdaSwitch(L=5, K=2)', 'SKD(top_k=5)'):.2f} "
        f"onpolicy_over_trl={onpolicy_over_trl:.2f}"
    )
    lines += [
        "",
        f"The closing line, all on {jax_result['backend']}: R4 is its on-policy step over TRL's.",
        "",
        "    " + closing,
        "",
    ]
    return "\n".join(lines), closing


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--rounds", type=int, default=7, help="warm rounds per backend (2 more compile)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--no-draft-sweep",
        dest="draft_sweep",
        action="store_false",
        help="skip the draft-length sweep (JAX)",
    )
    parser.add_argument("--trl-steps", type=int, default=8)
    parser.add_argument(
        "--smoke", action="store_true", help="3 rounds, batch 4, 3 strategies, JAX only, no TRL"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the closing line's 3 strategies, JAX and TRL only, 3 warm rounds (< 10 min)",
    )
    parser.add_argument(
        "--output", default=None, help="write the Markdown page and a .json beside it"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke and not args.worker:
        args.rounds, args.batch_size, args.backends, args.draft_sweep = 1, 4, "jax", False
    if args.quick and not args.worker:
        args.rounds, args.backends, args.draft_sweep, args.trl_steps = 3, "jax", False, 6
    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = []
    for backend in args.backends.split(","):
        command = [
            sys.executable,
            __file__,
            "--worker",
            "--rounds",
            str(args.rounds),
            "--batch-size",
            str(args.batch_size),
        ] + ([] if args.draft_sweep else ["--no-draft-sweep"])
        command += ["--smoke"] if args.smoke else []
        command += ["--quick"] if args.quick else []
        env = {**os.environ, "KERAS_BACKEND": backend}
        start = time.perf_counter()
        out = subprocess.run(command, env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{backend}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)

    trl = None
    if not args.smoke and importlib.util.find_spec("trl") is None:
        print(
            "TRL is not installed, so there is no TRL step to compare with and "
            "onpolicy_over_trl is nan: pip install -e '.[trl]' (the versions we measured).",
            file=sys.stderr,
            flush=True,
        )
    elif not args.smoke:
        from trl_gkd import transformers_parts_seconds
        from trl_gkd import trl_on_policy_step_seconds

        columns = int(
            statistics.median(x["rollout_columns OnPolicy"] for r in results for x in r["rounds"])
        )
        trl = trl_on_policy_step_seconds(
            args.batch_size, round(results[0]["prompt_length_mean"]), columns, steps=args.trl_steps
        )
        trl["max_new_tokens"] = columns
        trl["parts"] = transformers_parts_seconds(
            args.batch_size, round(results[0]["prompt_length_mean"]), columns
        )

    page, closing = summarize(results, trl)
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(page)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            settings = {k: v for k, v in vars(args).items() if k not in ("output", "worker")}
            json.dump(
                {"commit": git_commit(), "settings": settings, "results": results, "trl": trl},
                f,
                indent=1,
            )
    print(page)
    print(closing)


if __name__ == "__main__":
    main()
