"""An offline teacher: its top-k next-token log-probabilities over a data set,
computed once and stored, so that the strategies that train on ground truth
(SupervisedKD, and SFT's mixed loss) run with no teacher in memory.

    ak.teacher_cache.write(teacher, rows, "teacher.npz", top_k=32, max_new_tokens=256)
    distiller = ak.Distiller(None, student, strategy="supervised_kd", max_new_tokens=256)
    distiller.fit(ak.teacher_cache.dataset("teacher.npz", batch_size=8))

The file is NumPy's `.npz` (a zip of arrays, `np.load` reads it):

| array | dtype | shape | holds |
|---|---|---|---|
| `token_ids` | int32 | [N, T] | the packed rows: prompt, ground-truth response, padding |
| `padding_mask`, `response_mask` | bool | [N, T] | as `Distiller.make_dataset` packs them |
| `top_k_ids` | int32 | [N, R, k] | for the r-th ground-truth response token of row n, the teacher's k most likely tokens at that position |
| `top_k_log_probs` | float16 (or float32) | [N, R, k] | their log-probabilities: log-softmax over the whole vocabulary, temperature 1 |
| `meta` | str | [] | JSON: `top_k`, `vocabulary_size`, `max_new_tokens`, `longest_response` (R), `dtype`, the teacher's class and backbone config |

R is the longest ground-truth response; entries past a row's response are 0. The teacher part takes N x R x k x 6 bytes in float16 (N x R x k x 8
in float32), whatever the vocabulary: 7,473 GSM8K rows with R = 256 and
k = 32 take 367 MB. float16 keeps log-probabilities to a relative 5e-4
(11 significant bits).

The loss then uses `divergences.top_k_divergence`: the k tokens and one tail
bucket for the rest of the mass.
"""

import json
import math
import os
import zipfile

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from adaswitch_keras import divergences
from adaswitch_keras.pipeline import Pipeline
from adaswitch_keras.preprocessing import PromptResponsePacker

KEYS = divergences.TOP_K_KEYS  # batch keys, `[B, T, k]`


def write(
    teacher, data, path, *, top_k=32, max_new_tokens, batch_size=8, dtype="float16", verbose=1
):
    """Run `teacher` once over prompt/response `data` and store its top-k
    log-probabilities at every ground-truth response token in `path`.

    Args:
        teacher: a `keras_hub.models.CausalLM` with a preprocessor.
        data: rows with "prompts" and "responses" (a list of dicts, a dict
            of lists or a `tf.data.Dataset`).
        top_k: tokens kept per position (at most the vocabulary size).
        max_new_tokens: the rollout budget that packing leaves room for;
            the student's Distiller uses the same.
        dtype: "float16" or "float32" for the log-probabilities.

    Returns:
        the file's size in bytes.
    """
    vocabulary_size = teacher.preprocessor.tokenizer.vocabulary_size()
    if not 1 <= top_k <= vocabulary_size:
        raise ValueError(f"`top_k` must be in [1, {vocabulary_size}]. Received: top_k={top_k}")
    if dtype not in ("float16", "float32"):
        raise ValueError(f'`dtype` must be "float16" or "float32". Received: dtype={dtype!r}')
    packer = PromptResponsePacker(teacher.preprocessor, max_new_tokens)
    batches = Pipeline(packer).dataset(data, batch_size)
    rows = {
        key: []
        for key in ("token_ids", "padding_mask", "response_mask", "top_k_ids", "top_k_log_probs")
    }
    progress = keras.utils.Progbar(None, verbose=verbose, unit_name="batch")
    for batch in batches:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        logits = teacher({"token_ids": batch["token_ids"], "padding_mask": batch["padding_mask"]})
        log_probs = ops.log_softmax(ops.cast(logits[:, :-1, :vocabulary_size], "float32"), axis=-1)
        values, ids = (ops.convert_to_numpy(x) for x in ops.top_k(log_probs, k=top_k))
        for row in range(len(values)):  # position c - 1 predicts the token at column c
            columns = np.flatnonzero(batch["response_mask"][row])
            rows["top_k_ids"].append(ids[row, columns - 1])
            rows["top_k_log_probs"].append(values[row, columns - 1].astype(dtype))
        for key in ("token_ids", "padding_mask", "response_mask"):
            rows[key].append(batch[key])
        progress.add(1)
    longest = max(len(values) for values in rows["top_k_ids"])  # R
    arrays = {
        key: np.concatenate(rows[key]) for key in ("token_ids", "padding_mask", "response_mask")
    }
    for key in ("top_k_ids", "top_k_log_probs"):
        arrays[key] = np.stack([np.pad(v, ((0, longest - len(v)), (0, 0))) for v in rows[key]])
    arrays["top_k_ids"] = arrays["top_k_ids"].astype("int32")
    meta = {
        "top_k": top_k,
        "vocabulary_size": vocabulary_size,
        "max_new_tokens": max_new_tokens,
        "longest_response": longest,
        "dtype": dtype,
        "teacher": {"class": type(teacher).__name__, "backbone": teacher.backbone.get_config()},
    }
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta, default=str)), **arrays)
    return int(tf.io.gfile.stat(path).length)


def read(path):
    """The arrays of a cache file and its `meta` as a dict. A file that is
    not a cache this module wrote is refused with a one-line `ValueError`
    that names it, before any array is allocated (`_load`)."""
    arrays = _load(path, ARRAYS)
    arrays["meta"] = _meta(arrays["meta"], path)
    _check_arrays(arrays, path)
    return arrays


def meta(path):
    """A cache file's `meta` alone (the arrays stay on disk)."""
    return _meta(_load(path, ["meta"])["meta"], path)


# The arrays a cache holds: dtype kind ("i" integer, "b" bool, "f" float) and rank.
ARRAYS = {
    "meta": ("U", 0),
    "token_ids": ("i", 2),
    "padding_mask": ("b", 2),
    "response_mask": ("b", 2),
    "top_k_ids": ("i", 3),
    "top_k_log_probs": ("f", 3),
}
META = ("top_k", "vocabulary_size", "max_new_tokens", "longest_response")


def _load(path, keys):
    """The arrays `keys` of a checked `.npz`: a zip of exactly `ARRAYS`, each
    member's NumPy header of the right kind and rank and no larger than the
    member itself (NumPy allocates what a header declares before reading)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No teacher cache at {path!r}.")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if sorted(members) != sorted(f"{key}.npy" for key in ARRAYS):
                raise ValueError(f"it holds {sorted(members)}, not the arrays {list(ARRAYS)}")
            for key, (kind, rank) in ARRAYS.items():
                with archive.open(members[f"{key}.npy"]) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in ((1, 0), (2, 0)):  # np.savez writes 1.0
                        raise ValueError(f"{key} has NumPy format version {version}")
                    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
                    shape, _, dtype = read_header(member)
                    header = member.tell()
                if dtype.kind != kind or len(shape) != rank:
                    raise ValueError(f"{key} is {dtype} of rank {len(shape)}")
                if math.prod(shape) * dtype.itemsize > members[f"{key}.npy"].file_size - header:
                    raise ValueError(f"{key} declares shape {shape}, more than the file holds")
        with np.load(path, allow_pickle=False) as stored:
            return {key: stored[key] for key in keys}
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as error:
        cause = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path!r} is not a teacher cache: {cause}.") from None


def _meta(value, path):
    try:
        meta = json.loads(str(value))
        if not all(isinstance(meta.get(key), int) and meta[key] >= 0 for key in META):
            raise ValueError(f"meta lacks one of {META} as a count")
    except ValueError as error:  # json's errors are ValueErrors too
        cause = str(error).splitlines()[0]
        raise ValueError(f"{path!r} is not a teacher cache: {cause}.") from None
    return meta


def _check_arrays(arrays, path):
    """Shapes that agree with each other and with `meta`; token ids inside
    the vocabulary; responses no longer than R."""
    meta, (rows, length) = arrays["meta"], arrays["token_ids"].shape
    expected = {
        "padding_mask": (rows, length),
        "response_mask": (rows, length),
        "top_k_ids": (rows, meta["longest_response"], meta["top_k"]),
        "top_k_log_probs": (rows, meta["longest_response"], meta["top_k"]),
    }
    problems = [
        f"{key} has shape {arrays[key].shape}, not {shape}"
        for key, shape in expected.items()
        if arrays[key].shape != shape
    ]
    for key in ("token_ids", "top_k_ids"):
        values = arrays[key]
        if values.size and (values.min() < 0 or values.max() >= meta["vocabulary_size"]):
            problems.append(f"{key} holds ids outside [0, {meta['vocabulary_size']})")
    if rows and arrays["response_mask"].sum(1).max() > meta["longest_response"]:
        problems.append("a response is longer than meta's longest_response")
    if problems:
        raise ValueError(f"{path!r} is not a teacher cache: {problems[0]}.")


def dataset(path, batch_size=8, shuffle=False, seed=0):
    """Batches of a cache file for `Distiller.fit`: the packed rows and the
    teacher's top-k at each response column, `teacher_top_k_ids` and
    `teacher_top_k_log_probs` `[B, T, k]` (column c: for the token at c,
    as the rollout's `teacher_logits` are laid out); full batches only."""
    arrays = read(path)
    arrays.pop("meta")
    data = tf.data.Dataset.from_tensor_slices(arrays)
    if shuffle:
        data = data.shuffle(len(arrays["token_ids"]), seed=seed, reshuffle_each_iteration=True)
    return data.map(_to_columns).batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _to_columns(row):
    """One row's `[R, k]` top-k spread over its `[T, k]` response columns."""
    length = tf.shape(row["token_ids"])[0]
    prompt_length = tf.reduce_sum(
        tf.cast(tf.logical_and(row["padding_mask"], tf.logical_not(row["response_mask"])), tf.int32)
    )
    response_length = tf.reduce_sum(tf.cast(row["response_mask"], tf.int32))
    columns = prompt_length + tf.range(response_length)  # R >= every response length
    out = {key: row[key] for key in ("token_ids", "padding_mask", "response_mask")}
    for key, name in zip(KEYS, ("top_k_ids", "top_k_log_probs")):
        values = row[name][:response_length]
        shape = tf.concat([[length], tf.shape(values)[1:]], axis=0)
        out[key] = tf.scatter_nd(columns[:, None], values, shape)
    return out
