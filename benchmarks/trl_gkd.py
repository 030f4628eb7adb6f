"""Warm step time of TRL's `GKDTrainer` on-policy step (lmbda=1) on the tiny arithmetic pair, CPU torch.

    python benchmarks/trl_gkd.py [--batch-size 32] [--prompt-length 32] [--max-new-tokens 48]
                                 [--steps 8] [--warmup 2] [--seed 0] [--attn sdpa|eager] [--threads N] [--smoke]

The reference point for our own on-policy distillation step: the same teacher
and student shapes as the shipped `arithmetic-teacher` / `arithmetic-student`
presets, rebuilt as Transformers `Qwen2ForCausalLM` models (random init,
float32, tied embeddings; shapes read from the presets' config.json), the
presets' byte-level BPE tokenizer rebuilt locally as a `Qwen2Tokenizer`, and
TRL's `GKDTrainer` with

- lmbda=1.0: every step the student samples `max_new_tokens` tokens (top_k=0,
  top_p=1, temperature 1.0, KV cache on) from a prompt of exactly
  `prompt_length` tokens, then one student forward/backward and one teacher
  forward over prompt + completion, and an AdamW step;
- beta=0.0: in TRL's generalized JSD, beta=0 is `F.kl_div(student_log_probs,
  teacher_log_probs, log_target=True)` = KL(teacher || student), the forward
  KL, our default divergence (TRL's own default is beta=0.5, the JSD);
- no EOS token for generation (removed from the student's config and
  generation config), so generation never stops early and the completion mask
  is all ones: every step generates exactly `max_new_tokens` tokens per row.
  This is checked on every step (`generated_tokens_per_step`).

Per-step time is wall time between `on_step_begin` and `on_step_end` of a
`TrainerCallback` (this excludes fetching and collating the batch, as Keras'
`on_train_batch_begin/end` do); the first `warmup` steps are dropped and the
median of the rest is reported. No evaluation, saving or logging (beyond the
Trainer's own minimum), no gradient checkpointing (TRL's configs default it to
True, which would also turn the KV cache off during generation) and no bf16
(TRL defaults it to True).

Attention defaults to "sdpa"; "eager" measured the same on this CPU pair
(within noise), so either can be used. Thread count matters far more: with
torch's default (one thread per core) a step on a 2-core machine that other
processes also load can be ~10x slower than with `--threads 1`, so compare
against our step run with the same thread setting and machine load.

Nothing is downloaded: models come from configs, the tokenizer from the preset
files in this repository.
"""

import argparse
import importlib.util
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "adaswitch_keras" / "presets"
TOKENIZER_DIR = PRESETS / "arithmetic-teacher" / "assets" / "tokenizer"
END_TOKEN = "<|endoftext|>"
# The prompt is the user turn's text and the reference completion the
# assistant turn's text, with nothing added, so that token counts are exact.
CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_tokenizer():
    """The presets' tokenizer (265 tokens, byte-level BPE) as a Transformers fast tokenizer."""
    from transformers import Qwen2Tokenizer

    vocabulary = json.loads((TOKENIZER_DIR / "vocabulary.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split())
        for line in (TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#version")
    ]
    tokenizer = Qwen2Tokenizer(
        vocab=vocabulary, merges=merges, unk_token=None, eos_token=END_TOKEN, pad_token=END_TOKEN
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    if len(tokenizer) != len(vocabulary):
        raise RuntimeError(
            f"Tokenizer has {len(tokenizer)} tokens, the preset vocabulary {len(vocabulary)}."
        )
    return tokenizer


def qwen2_config(preset, attn_implementation, max_positions):
    """A `Qwen2Config` with exactly the shapes of a shipped KerasHub Qwen preset."""
    from transformers import Qwen2Config

    c = json.loads((PRESETS / preset / "config.json").read_text())["config"]
    if c.get("use_sliding_window_attention") or c.get("rope_scaling_factor", 1.0) != 1.0:
        raise ValueError(f"{preset}: sliding windows and RoPE scaling are not mirrored here.")
    config = Qwen2Config(
        vocab_size=c["vocabulary_size"],
        hidden_size=c["hidden_dim"],
        intermediate_size=c["intermediate_dim"],
        num_hidden_layers=c["num_layers"],
        num_attention_heads=c["num_query_heads"],
        num_key_value_heads=c["num_key_value_heads"],
        rms_norm_eps=c["layer_norm_epsilon"],
        rope_parameters={"rope_type": "default", "rope_theta": float(c["rope_max_wavelength"])},
        tie_word_embeddings=c["tie_word_embeddings"],
        attention_dropout=float(c.get("dropout", 0.0)),
        max_position_embeddings=max_positions,
        use_sliding_window=False,
        # No BOS/EOS: generation must not stop before max_new_tokens.
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config._attn_implementation = attn_implementation
    return config


def build_model(preset, attn_implementation, max_positions, pad_token_id):
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(qwen2_config(preset, attn_implementation, max_positions)).to(
        torch.float32
    )
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = pad_token_id
    return model


def _arithmetic_module():
    """adaswitch_keras/data/arithmetic.py, loaded without importing Keras."""
    spec = importlib.util.spec_from_file_location(
        "_arithmetic", ROOT / "adaswitch_keras" / "data" / "arithmetic.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _exact(tokenizer, text, n, following=""):
    """A substring of `text` that encodes to exactly `n` tokens, on token
    boundaries, and (with `following`) that does not merge with what follows."""
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = encode(text)
    for start in range(0, max(1, len(ids) - n + 1)):
        piece = tokenizer.decode(ids[start : start + n])
        piece_ids = encode(piece)
        if len(piece_ids) != n:
            continue
        if following and encode(piece + following) != piece_ids + encode(following):
            continue
        return piece
    raise ValueError(f"Could not cut {n} tokens out of {text[:60]!r}...")


def build_dataset(tokenizer, rows, prompt_length, completion_length, seed):
    """GKD's conversational format: {"messages": [user prompt, assistant reference]},
    the prompt exactly `prompt_length` tokens and the reference exactly
    `completion_length` tokens (the reference is replaced by the student's
    sample on-policy; it only sets the Trainer's token count for the loss)."""
    from datasets import Dataset

    problems = _arithmetic_module().generate("train", size=rows + 8, seed=seed)
    examples = []
    for i in range(rows):
        # Enough problem text for the prompt: the question, then more questions.
        question = " ".join(
            problems[(i + j) % len(problems)]["question"] for j in range(1 + prompt_length // 16)
        )
        solution = "\n" + "\n".join(
            problems[(i + j) % len(problems)]["solution"] for j in range(1 + completion_length // 8)
        )
        answer = _exact(tokenizer, solution, completion_length)
        prompt = _exact(tokenizer, question, prompt_length, following=answer)
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return Dataset.from_list(examples)


def trl_on_policy_step_seconds(
    batch_size,
    prompt_length,
    max_new_tokens,
    steps=8,
    warmup=2,
    seed=0,
    attn_implementation="sdpa",
    num_threads=None,
):
    """Median wall time of TRL GKDTrainer's on-policy (lmbda=1) training step, CPU torch.

    Returns {"median_step_seconds", "step_seconds" (the timed steps, after
    `warmup`), "teacher_parameters", "student_parameters", "trl_version",
    "transformers_version"} plus the settings and checks that qualify them.
    `num_threads`, if given, is passed to `torch.set_num_threads` (default:
    torch's own, one per core).
    """
    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup}).")
    import torch
    import transformers
    import trl
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from transformers.trainer_callback import ProgressCallback
    from trl.experimental.gkd import GKDConfig
    from trl.experimental.gkd import GKDTrainer

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    random.seed(seed)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    max_positions = max(
        160, prompt_length + max_new_tokens
    )  # 160: the presets' preprocessor sequence_length
    teacher = build_model(
        "arithmetic-teacher", attn_implementation, max_positions, tokenizer.pad_token_id
    )
    student = build_model(
        "arithmetic-student", attn_implementation, max_positions, tokenizer.pad_token_id
    )
    dataset = build_dataset(tokenizer, steps * batch_size, prompt_length, max_new_tokens, seed)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.seconds, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self._start)

    clock = StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = GKDConfig(
            output_dir=output_dir,
            lmbda=1.0,
            beta=0.0,
            temperature=1.0,
            max_new_tokens=max_new_tokens,
            max_length=prompt_length + max_new_tokens,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=1,
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            max_steps=steps,
            num_train_epochs=1,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_steps=10**9,
            disable_tqdm=True,
            use_cpu=True,
            dataloader_num_workers=0,
            bf16=False,
            fp16=False,
            gradient_checkpointing=False,
            seed=seed,
            data_seed=seed,
        )
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        # With disable_tqdm the Trainer prints its final metrics dict to stdout; keep stdout for our JSON.
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        if trainer.generation_config.eos_token_id is not None:
            raise RuntimeError(
                f"Generation would stop at EOS {trainer.generation_config.eos_token_id}."
            )

        # The collated prompts must be exactly prompt_length tokens, unpadded.
        batch = trainer.data_collator([dataset[i] for i in range(batch_size)])
        if tuple(batch["prompts"].shape) != (batch_size, prompt_length) or not bool(
            batch["prompt_attention_mask"].all()
        ):
            raise RuntimeError(
                f"Collated prompts have shape {tuple(batch['prompts'].shape)}, not unpadded "
                f"({batch_size}, {prompt_length})."
            )

        # Record what each on-policy step actually generated.
        generated = []
        original = trainer.generate_on_policy_outputs

        def generate_on_policy_outputs(model, inputs, generation_config):
            ids, mask, labels = original(model, inputs, generation_config)
            new = ids.shape[1] - inputs["prompts"].shape[1]
            per_row = (labels != -100).sum(dim=1)
            generated.append(new if bool((per_row == new).all()) else int(per_row.min()))
            return ids, mask, labels

        trainer.generate_on_policy_outputs = generate_on_policy_outputs
        start = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - start

    if len(clock.seconds) != steps:
        raise RuntimeError(f"Timed {len(clock.seconds)} steps, expected {steps}.")
    if any(n != max_new_tokens for n in generated) or len(generated) != steps:
        raise RuntimeError(
            f"Generated {generated} tokens per step, expected {max_new_tokens} on each of {steps}."
        )
    timed = clock.seconds[warmup:]
    return {
        "median_step_seconds": statistics.median(timed),
        "step_seconds": timed,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        # Settings and checks.
        "torch_version": torch.__version__,
        "torch_num_threads": torch.get_num_threads(),
        "warmup_step_seconds": clock.seconds[:warmup],
        "train_seconds": train_seconds,
        "generated_tokens_per_step": generated,
        "batch_size": batch_size,
        "prompt_length": prompt_length,
        "max_new_tokens": max_new_tokens,
        "steps": steps,
        "warmup": warmup,
        "seed": seed,
        "attn_implementation": attn_implementation,
        "lmbda": 1.0,
        "beta": 0.0,
        "divergence": "forward KL(teacher || student) (TRL beta=0)",
        "temperature": 1.0,
        "optimizer": str(trainer.args.optim),
        "max_grad_norm": trainer.args.max_grad_norm,
        "dtype": "float32",
        "tokenizer": "Qwen2Tokenizer from the arithmetic presets' vocabulary.json/merges.txt (265 tokens)",
    }


def generate_exactly(model, prompts, new_tokens):
    """Transformers' `generate` as TRL's on-policy step samples: temperature
    1 over the whole vocabulary, exactly `new_tokens` tokens per row."""
    import torch

    with torch.no_grad():
        return model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            top_k=0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
        )


def transformers_parts_seconds(
    batch_size, prompt_length, max_new_tokens, rounds=5, warmup=2, seed=0, num_threads=None
):
    """The parts of TRL's on-policy step, each timed alone at its shapes, as
    `benchmarks/speed.py` times ours: the student's `generate` (KV cache,
    sampling, exactly `max_new_tokens`), one teacher forward over prompt +
    completion without gradients, and the student's gradient step (forward,
    forward KL to the teacher's logits over the completion, backward, AdamW).
    Medians over `rounds` after `warmup`, in seconds."""
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    max_positions = max(160, prompt_length + max_new_tokens)
    teacher, student = (
        build_model(preset, "sdpa", max_positions, tokenizer.pad_token_id)
        for preset in ("arithmetic-teacher", "arithmetic-student")
    )
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    prompts = torch.randint(0, len(tokenizer), (batch_size, prompt_length))

    def generate():
        return generate_exactly(student, prompts, max_new_tokens)

    sequences = generate()

    def teacher_forward():
        with torch.no_grad():
            return teacher(sequences).logits

    teacher_logits = teacher_forward()

    def gradient_step():
        logits = student(sequences).logits[:, prompt_length - 1 : -1]
        log_p = torch.log_softmax(teacher_logits[:, prompt_length - 1 : -1], dim=-1)
        loss = torch.nn.functional.kl_div(
            torch.log_softmax(logits, dim=-1), log_p, log_target=True, reduction="none"
        )
        loss.sum(-1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    seconds = {}
    for name, part in (
        ("student generate", generate),
        ("teacher forward", teacher_forward),
        ("gradient step", gradient_step),
    ):
        times = []
        for _ in range(warmup + rounds):
            start = time.perf_counter()
            part()
            times.append(time.perf_counter() - start)
        seconds[name] = statistics.median(times[warmup:])
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attn", choices=("sdpa", "eager"), default="sdpa", help="attention implementation"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="a 2-step run (1 warm-up step, 1 timed)"
    )
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.warmup = 2, 1

    import transformers

    transformers.logging.set_verbosity_error()
    start = time.perf_counter()
    result = trl_on_policy_step_seconds(
        args.batch_size,
        args.prompt_length,
        args.max_new_tokens,
        steps=args.steps,
        warmup=args.warmup,
        seed=args.seed,
        attn_implementation=args.attn,
        num_threads=args.threads,
    )
    result["script_seconds"] = time.perf_counter() - start
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
