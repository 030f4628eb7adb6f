"""The input pipeline: `{"prompts", "responses"}` data to packed batches.

`Pipeline.dataset` packs a `tf.data.Dataset`, a dict of lists or a list of
dicts into `token_ids`, `padding_mask` and `response_mask` batches (see
`preprocessing.PromptResponsePacker`); in-memory rows are tokenized once and
cached. `Pipeline.training_stream` turns in-memory rows into an endless,
resumable stream: its position is a function of the optimizer's step count,
which backups keep.
"""

import random

import keras
import numpy as np
import tensorflow as tf

PACKED_KEYS = ("token_ids", "padding_mask", "response_mask")
# What `Pipeline.dataset` reads; other fields of task rows (answers, references) are dropped.
INPUT_KEYS = ("prompts", "responses", *PACKED_KEYS)


class Pipeline:
    """Packed batches for one Distiller.

    Args:
        packer: a `preprocessing.PromptResponsePacker`.
        seed: orders the passes of `training_stream` (random when None).
    """

    def __init__(self, packer, seed=None):
        self.packer = packer
        self.seed = random.randrange(2**31) if seed is None else seed
        self.steps_taken = 0  # where `training_stream` starts; see `StreamStart`

    def dataset(self, data, batch_size=None, needs_responses=True):
        """A batched, packed `tf.data.Dataset` from prompt/response data: a
        `tf.data.Dataset` (taken in its order), a dict of lists or a list of
        dicts (tokenized once). Data already packed (with `token_ids`,
        `padding_mask`, `response_mask`) is only batched."""
        if isinstance(data, (list, tuple, dict)):
            packed, _ = self.packed_rows(data, needs_responses)
            return packed.batch(batch_size or 8).prefetch(tf.data.AUTOTUNE)
        if not isinstance(data, tf.data.Dataset):
            raise ValueError(
                "Expected a tf.data.Dataset, a dict of lists or a list of dicts "
                f'with "prompts" and "responses". Received: {type(data).__name__}'
            )
        spec = data.element_spec
        packed_keys = [key for key in PACKED_KEYS if isinstance(spec, dict) and key in spec]
        if not packed_keys and (not isinstance(spec, dict) or "prompts" not in spec):
            raise ValueError(
                'Dataset elements must be dicts with a "prompts" key (and '
                f'"responses"). Received element_spec: {spec}'
            )
        if not packed_keys and "responses" not in spec:
            if needs_responses:
                raise ValueError(
                    'Dataset has no "responses": the strategy and evaluation '
                    "train on ground-truth responses."
                )
            data = data.map(lambda row: {**row, "responses": tf.fill(tf.shape(row["prompts"]), "")})
        if spec[packed_keys[0] if packed_keys else "prompts"].shape.rank == int(bool(packed_keys)):
            data = data.batch(batch_size or 8)
        if packed_keys:
            check_batch(data.element_spec)
        if data.cardinality() == 0 or (
            data.cardinality() == tf.data.UNKNOWN_CARDINALITY and not list(data.take(1))
        ):  # unknown, e.g. filtered: one batch is looked at
            raise ValueError("The dataset is empty: no prompt/response pairs.")
        if not packed_keys:
            data = data.map(self.packer, num_parallel_calls=tf.data.AUTOTUNE)
        return data.prefetch(tf.data.AUTOTUNE)

    def packed_rows(self, data, needs_responses):
        """Rows from a list or dict, tokenized once and cached (re-tokenizing
        every batch competes with the training step for the CPU:
        benchmarks/fit_speed.py), unbatched; and their number."""
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("The dataset is empty: no prompt/response pairs.")
            if not all(isinstance(row, dict) for row in data):
                raise ValueError('Expected a list of {"prompts": str, "responses": str} dicts.')
            keys = [key for key in INPUT_KEYS if key in data[0]]
            for index, row in enumerate(data):
                if [key for key in INPUT_KEYS if key in row] != keys:
                    raise ValueError(
                        f"Row {index} has fields {sorted(set(INPUT_KEYS) & set(row))}, "
                        f"row 0 has {sorted(keys)}: every row needs the same fields."
                    )
            data = {key: [row[key] for row in data] for key in keys}
        data = {key: data[key] for key in INPUT_KEYS if key in data}
        if "prompts" in data and "token_ids" not in data:
            self.packer.check_prompts(list(data["prompts"]))
        elif "token_ids" in data:
            self.packer.check_packed(data, needs_responses)
        size = len(next(iter(data.values()), []))
        packed = self.dataset(
            tf.data.Dataset.from_tensor_slices(data), 1024, needs_responses
        ).unbatch()
        return packed.apply(tf.data.experimental.assert_cardinality(size)).cache(), size

    def training_stream(self, data, batch_size=None, needs_responses=True, shuffle=True):
        """Endless batches of in-memory rows, pass after pass, each pass in
        an order drawn from (seed, pass number) alone, as wide as the rows
        use (`used_width`), starting after the `steps_taken` batches (read when iteration starts: `StreamStart`
        sets it to the optimizer's step count, after any restore); and the
        number of steps of one pass. Full batches only, so compiled steps
        never see a new shape."""
        packed, size = self.packed_rows(data, needs_responses)
        rows = packed.batch(size).get_single_element()
        # Padding columns that nothing reads or writes are cut (the rollout's
        # random draws, one per column, are then those of a narrower batch):
        # models and loss work on the columns in use, as Transformers'
        # padding to the longest row does; one width, one compiled step.
        width = self.used_width(rows)
        rows = {key: value[:, :width] for key, value in rows.items()}
        seed = self.seed

        def one_pass(number):
            order = tf.range(size)
            if shuffle:
                noise = tf.random.stateless_uniform(
                    [size], seed=tf.stack([tf.cast(seed, tf.int64), number])
                )
                order = tf.argsort(noise)
            return tf.data.Dataset.from_tensor_slices(
                tf.nest.map_structure(lambda rows: tf.gather(rows, order), rows)
            )

        batch_size = batch_size or 8
        batches = (
            tf.data.Dataset.counter().flat_map(one_pass).batch(batch_size, drop_remainder=True)
        )

        def after_the_steps_taken(_):
            return batches.skip(tf.py_function(lambda: self.steps_taken, [], tf.int64))

        stream = tf.data.Dataset.range(1).flat_map(after_the_steps_taken)
        return stream.prefetch(tf.data.AUTOTUNE), -(-size // batch_size)

    def used_width(self, rows):
        """Columns that rows `{"padding_mask", "response_mask"}` `[N, T]`
        use: the longest row, and at least the longest prompt plus
        `max_new_tokens` (the rollout writes every row within its prompt plus
        `max_new_tokens`)."""
        tokens = np.sum(np.asarray(rows["padding_mask"], bool), axis=1)
        responses = np.sum(np.asarray(rows["response_mask"], bool), axis=1)
        return int(max(tokens.max(), (tokens - responses).max() + self.packer.max_new_tokens))


class StreamStart(keras.callbacks.Callback):
    """Sets where `Pipeline.training_stream` starts: the optimizer's step
    count when training begins (after a `BackupAndRestore` restore). List it
    after any callback that restores."""

    def __init__(self, pipeline):
        super().__init__()
        self.pipeline = pipeline

    def on_train_begin(self, logs=None):
        self.pipeline.steps_taken = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


def check_batch(inputs, targets=None, sample_weight=None):
    """A clear error for a batch the rollout and the loss cannot read: a dict
    of `token_ids` (integers), `padding_mask` and `response_mask` (bool or
    integers), all `[B, T]` with B >= 1, and no targets or sample weights.
    Reads only dtypes and shapes: runs on arrays, tensors, symbolic tensors
    and `tf.TensorSpec`s alike, outside or inside a compiled step."""
    if targets is not None or sample_weight is not None:
        raise ValueError(
            "The Distiller trains on inputs alone (prompts and responses); the "
            "response mask weights the tokens. Pass no targets or sample weights."
        )
    if not isinstance(inputs, dict) or not set(PACKED_KEYS) <= set(inputs):
        received = sorted(inputs) if isinstance(inputs, dict) else type(inputs).__name__
        raise ValueError(
            f"Expected a packed batch: a dict with {PACKED_KEYS}, as `make_dataset` "
            f"returns. Received: {received}"
        )
    shapes = {
        key: tuple(getattr(inputs[key], "shape", None) or np.shape(inputs[key]))
        for key in PACKED_KEYS
    }
    if any(len(shape) != 2 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        raise ValueError(
            f"{PACKED_KEYS} must all be [batch, length] alike. Received shapes {shapes}."
        )
    if shapes["token_ids"][0] == 0:
        raise ValueError("The batch is empty: it has no rows.")
    if shapes["token_ids"][1] is None and keras.config.backend() == "tensorflow":
        raise ValueError(
            "On TensorFlow, batches need a known width: the rollout's loops have static shapes. "
            "Pad every batch to one length (`tf.data.Dataset.padded_batch` with "
            "`padded_shapes`), or pass prompts and responses. Received shapes "
            f"{shapes}."
        )
    for key in PACKED_KEYS:
        dtype = getattr(inputs[key], "dtype", None)
        dtype = np.asarray(inputs[key]).dtype if dtype is None else getattr(dtype, "name", dtype)
        try:
            dtype = keras.backend.standardize_dtype(dtype)
        except ValueError:  # strings, objects: no Keras dtype
            dtype = str(dtype)
        if not ("int" in dtype or (key != "token_ids" and dtype == "bool")):
            kinds = "integers" if key == "token_ids" else "bool or integers"
            raise ValueError(f"`{key}` must be {kinds}. Received dtype {dtype}.")
