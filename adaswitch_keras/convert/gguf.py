"""Llama-family GGUF checkpoints (llama.cpp's format) as KerasHub models.

    model = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")  # a KerasHub Llama3CausalLM
    convert_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-preset")  # ... as a preset
    student = prune_layers(model, keep=range(0, 30, 3))  # same tokenizer, 10 blocks
    save_gguf(student, "student.gguf")  # ... and back, for llama.cpp (F32 or F16)

The file is read, and every tensor dequantized (F32, F16, Q8_0, Q4_1, ...), or
written, by llama.cpp's own `gguf` package (`pip install gguf`). llama.cpp's
converter permutes the rows of the query and key projections for its
interleaved rotary embedding; the loader undoes that, back to the half-split
layout that Hugging Face and KerasHub use, and `save_gguf` applies it again.

The model is KerasHub's Llama 3 (`Llama3CausalLM`, `Llama3Backbone`, a
byte-level BPE tokenizer) through small subclasses, registered with Keras,
that keep in their config what KerasHub 0.32 drops: the tokenizer's start,
end and special tokens, whether the backbone ties its embeddings, and what
`save_gguf` writes back: the chat template and the context length. Import
`adaswitch_keras.convert` before `keras_hub.models.CausalLM.from_preset(dir)`
on a preset saved from one.
"""

import os
import warnings

import keras
import numpy as np
from keras_hub.models import Llama3Backbone
from keras_hub.models import Llama3CausalLM
from keras_hub.models import Llama3CausalLMPreprocessor
from keras_hub.models import LlamaBackbone
from keras_hub.tokenizers import BytePairTokenizer

ARCHITECTURES = ("llama",)
PRE_TOKENIZERS = ("llama3", "gpt2", "smollm")
# llama.cpp's `tokenizer.ggml.pre` -> GGUFTokenizer's pre_tokenizer.
_PRE_TOKENIZER_OF = {"llama-bpe": "llama3", "llama3": "llama3", "gpt2": "gpt2", "smollm": "smollm"}
_PRE_TOKENIZER_NAME = {"llama3": "llama-bpe", "gpt2": "gpt2", "smollm": "smollm"}  # ... and back
_NORMAL, _CONTROL, _UNUSED = 1, 3, 5  # llama.cpp's token types (gguf.TokenType)
_BLOCK_TENSORS = (
    "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
    "ffn_norm", "ffn_gate", "ffn_up", "ffn_down",
)  # fmt: skip


@keras.saving.register_keras_serializable(package="adaswitch_keras")
class GGUFBackbone(Llama3Backbone):
    """A `Llama3Backbone` whose config keeps `tie_word_embeddings`
    (KerasHub 0.32's drops it, so a tied preset would not reload) and the
    GGUF file's `context_length` (the length it was trained for, or `None`)."""

    def __init__(self, *args, context_length=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.context_length = context_length

    def get_config(self):
        return {
            **super().get_config(),
            "tie_word_embeddings": self.tie_word_embeddings,
            "context_length": self.context_length,
        }


@keras.saving.register_keras_serializable(package="adaswitch_keras")
class GGUFTokenizer(BytePairTokenizer):
    """KerasHub's byte-level BPE tokenizer (the base of `Llama3Tokenizer` and
    `QwenTokenizer`) with a checkpoint's own special tokens, in its config.

    Args:
        vocabulary, merges: as `BytePairTokenizer`'s.
        bos_token: the start token, or `None` for a file that adds none (like
            SmolLM2; KerasHub's `generate_preprocess` would add one even with
            `add_start_token=False`).
        eos_token: the end token, e.g. "<|im_end|>".
        misc_special_tokens: other special tokens, in id order; kept whole.
        pre_tokenizer: how text is split before BPE outside `tf.data`:
            "llama3" (KerasHub's default), "gpt2" (GPT-2's regex) or "smollm"
            (digits one by one, then GPT-2's). Inside `tf.data` KerasHub
            always uses its own GPT-2-like split.
        chat_template: the file's Jinja chat template, or `None`; kept only to
            be written back by `save_gguf`.
    """

    backbone_cls = GGUFBackbone

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        bos_token=None,
        eos_token="<|end_of_text|>",
        misc_special_tokens=(),
        pre_tokenizer="llama3",
        chat_template=None,
        **kwargs,
    ):
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise ValueError(
                f"pre_tokenizer must be one of {PRE_TOKENIZERS}; got {pre_tokenizer!r}."
            )
        self.pre_tokenizer = pre_tokenizer
        self.chat_template = chat_template
        self.start_token = self.start_token_id = None
        self._add_special_token(eos_token, "end_token")
        if bos_token is not None:
            self._add_special_token(bos_token, "start_token")
        others = [t for t in misc_special_tokens if t not in (bos_token, eos_token)]
        for i, token in enumerate(others):
            self._add_special_token(token, f"special_token_{i:03d}")
        self.pad_token_id = 0  # as Llama3Tokenizer; padding is always masked
        # KerasHub's tf.data path swaps the i-th of these for "Ĵ" + the digits
        # of i as letters, so with more than 10 the 2nd's stand-in ("ĴB") is a
        # prefix of the 11th's ("ĴBA") and those past the 10th break: a fixed
        # order keeps the end, start and first special tokens among the first
        # 10 (KerasHub's default order is a set's, different in every run).
        ends = [eos_token] + ([bos_token] if bos_token is not None else [])
        kwargs.setdefault("unsplittable_tokens", ends + others)
        super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)

    def _set_vocabulary_and_merges_tokenizers(self, vocabulary, merges):
        super()._set_vocabulary_and_merges_tokenizers(vocabulary, merges)
        if self.pre_tokenizer == "llama3":
            return
        from tokenizers import pre_tokenizers

        steps = [pre_tokenizers.ByteLevel(add_prefix_space=self.add_prefix_space, use_regex=True)]
        if self.pre_tokenizer == "smollm":
            steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)

    def get_config(self):
        config = super().get_config()
        ends = {self.start_token, self.end_token}
        config.update(
            bos_token=self.start_token,
            eos_token=self.end_token,
            misc_special_tokens=[t for t in self.unsplittable_tokens if t not in ends],
            pre_tokenizer=self.pre_tokenizer,
            chat_template=self.chat_template,
        )
        return config


@keras.saving.register_keras_serializable(package="adaswitch_keras")
class GGUFCausalLMPreprocessor(Llama3CausalLMPreprocessor):
    """`Llama3CausalLMPreprocessor` for `GGUFBackbone` presets."""

    backbone_cls = GGUFBackbone
    tokenizer_cls = GGUFTokenizer


@keras.saving.register_keras_serializable(package="adaswitch_keras")
class GGUFCausalLM(Llama3CausalLM):
    """`Llama3CausalLM` for `GGUFBackbone` presets (KerasHub finds a preset's
    task class by its exact backbone class)."""

    backbone_cls = GGUFBackbone
    preprocessor_cls = GGUFCausalLMPreprocessor


def load_gguf(path, *, sequence_length=1024, dtype=None):
    """Read a Llama-family GGUF file as a KerasHub `Llama3CausalLM`.

    Args:
        path: the `.gguf` file (llama.cpp architecture "llama", byte-level
            BPE tokenizer; any tensor type `gguf.quants` can dequantize).
        sequence_length: the preprocessor's packed length.
        dtype: the backbone's dtype, e.g. "bfloat16"; default Keras' floatx.

    Returns:
        a `keras_hub.models.CausalLM` (backbone, tokenizer, preprocessor)
        whose preprocessor ends sequences with the file's end token.
    """
    reader = _open(path)
    try:
        config = _backbone_config(reader, path)
        tokenizer = _tokenizer(reader, path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path!r}: a metadata string is not UTF-8 ({error}).") from None
    tensors = {t.name: t for t in reader.tensors}
    _check_tensor_names(tensors, config["num_layers"], path)
    config["vocabulary_size"] = int(tensors["token_embd.weight"].shape[1])
    config["tie_word_embeddings"] = "output.weight" not in tensors
    backbone = GGUFBackbone(**config, dtype=dtype)
    _set_weights(backbone, lambda name: _dequantize(tensors[name], path))
    preprocessor = GGUFCausalLMPreprocessor(
        tokenizer=tokenizer,
        sequence_length=sequence_length,
        add_start_token=tokenizer.start_token is not None,
    )
    return GGUFCausalLM(backbone=backbone, preprocessor=preprocessor)


def convert_gguf(path, preset_dir, **kwargs):
    """`load_gguf(path, **kwargs)` saved as a KerasHub preset in `preset_dir`;
    returns the model."""
    model = load_gguf(path, **kwargs)
    model.save_to_preset(preset_dir)
    return model


def prune_layers(model, keep):
    """A new Llama `CausalLM` with copies of only the blocks `keep` of `model`.

    The embeddings and final norm are copied too and the tokenizer is shared,
    so the result can be a student of `model`: e.g. `keep=range(0, 30, 3)`
    keeps every third block of a 30-block model.
    """
    keep = [int(i) for i in keep]
    backbone = model.backbone
    if not isinstance(backbone, LlamaBackbone):
        raise ValueError(f"prune_layers takes a Llama model; got a {type(backbone).__name__}.")
    if not keep or any(not 0 <= i < backbone.num_layers for i in keep):
        raise ValueError(
            f"`keep` must list block indices in [0, {backbone.num_layers}); got {keep}."
        )
    config = {**backbone.get_config(), "num_layers": len(keep)}
    config["tie_word_embeddings"] = backbone.tie_word_embeddings
    config.pop("name", None)
    pruned = GGUFBackbone.from_config(config)
    pruned.token_embedding.set_weights(backbone.token_embedding.get_weights())
    pruned.layer_norm.set_weights(backbone.layer_norm.get_weights())
    for new, old in zip(pruned.transformer_layers, keep):
        new.set_weights(backbone.transformer_layers[old].get_weights())
    preprocessor = GGUFCausalLMPreprocessor(
        tokenizer=model.preprocessor.tokenizer,
        sequence_length=model.preprocessor.sequence_length,
        add_start_token=model.preprocessor.add_start_token,
        add_end_token=model.preprocessor.add_end_token,
    )
    return GGUFCausalLM(backbone=pruned, preprocessor=preprocessor)


def save_gguf(model, path, *, dtype="float32"):
    """Write a Llama `CausalLM` as a llama.cpp GGUF file: `load_gguf`'s inverse.

    The file has the keys, tensor names and layouts that llama.cpp's
    `convert_hf_to_gguf.py` writes for a Llama (query and key rows permuted
    for its rotary embedding), and the byte-level BPE tokenizer with its
    special tokens as control tokens, its chat template (kept by `load_gguf`)
    and, for embedding rows past the vocabulary, llama.cpp's "[PAD<id>]" tokens.

    Args:
        model: a Llama `CausalLM` with a preprocessor: `load_gguf`'s,
            `prune_layers`' or KerasHub's `Llama3CausalLM`, with a byte-level
            BPE tokenizer (not Llama 2's SentencePiece one).
        path: the `.gguf` file to write.
        dtype: "float32" or "float16", the type of the matrices; the norms
            stay float32, as llama.cpp keeps them.

    The context length written is the one `load_gguf` read, else the
    preprocessor's sequence length. Returns `path`.
    """
    gguf = _import_gguf()
    types = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16}
    if dtype not in types:
        raise ValueError(f"dtype must be one of {tuple(types)}; got {dtype!r}.")
    backbone, preprocessor = model.backbone, model.preprocessor
    _check_writable(backbone, preprocessor)
    tokenizer = preprocessor.tokenizer
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
    if backbone.vocabulary_size < len(tokens):
        raise ValueError(
            f"The embedding has {backbone.vocabulary_size} rows, fewer than the "
            f"tokenizer's {len(tokens)} tokens."
        )
    special = set(tokenizer.special_tokens)
    token_types = [_CONTROL if t in special else _NORMAL for t in tokens]
    for i in range(len(tokens), backbone.vocabulary_size):  # as convert_hf_to_gguf.py
        tokens.append(f"[PAD{i}]")
        token_types.append(_UNUSED)

    writer = gguf.GGUFWriter(os.fspath(path), "llama")
    writer.add_block_count(backbone.num_layers)
    writer.add_context_length(
        getattr(backbone, "context_length", None) or preprocessor.sequence_length
    )
    writer.add_embedding_length(backbone.hidden_dim)
    writer.add_feed_forward_length(backbone.intermediate_dim)
    writer.add_head_count(backbone.num_query_heads)
    writer.add_head_count_kv(backbone.num_key_value_heads)
    writer.add_rope_freq_base(backbone.rope_max_wavelength)
    writer.add_layer_norm_rms_eps(backbone.layer_norm_epsilon)
    writer.add_file_type(types[dtype])
    writer.add_vocab_size(backbone.vocabulary_size)
    writer.add_rope_dimension_count(backbone.hidden_dim // backbone.num_query_heads)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_PRE_TOKENIZER_NAME[getattr(tokenizer, "pre_tokenizer", "llama3")])
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(list(tokenizer.merges))
    if tokenizer.start_token_id is not None:
        writer.add_bos_token_id(tokenizer.start_token_id)
    writer.add_eos_token_id(tokenizer.end_token_id)
    if getattr(tokenizer, "pad_token_id", None) is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    add_bos = preprocessor.add_start_token and tokenizer.start_token_id is not None
    writer.add_add_bos_token(bool(add_bos))
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    for name, array in _get_weights(backbone):
        array = array if array.ndim == 1 else array.astype(dtype)  # norms stay F32
        writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _check_writable(backbone, preprocessor):
    if not isinstance(backbone, LlamaBackbone):
        raise ValueError(f"save_gguf writes Llama models only; got a {type(backbone).__name__}.")
    scaled = backbone.rope_position_scaling_factor != 1.0
    if scaled or backbone.rope_frequency_adjustment_factor is not None:
        raise ValueError(
            "save_gguf cannot write RoPE scaling (rope_position_scaling_factor, "
            "rope_frequency_adjustment_factor); this backbone uses it."
        )
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if not isinstance(tokenizer, BytePairTokenizer):
        raise ValueError(
            "save_gguf needs the model's preprocessor with a byte-level BPE tokenizer "
            f"(llama.cpp's 'gpt2' model); got a {type(tokenizer).__name__}."
        )


def _import_gguf():
    try:
        import gguf
    except ImportError as error:
        raise ImportError(
            "Reading and writing GGUF files needs llama.cpp's `gguf` package: "
            "`pip install gguf` (or `pip install adaswitch-keras[convert]`)."
        ) from error
    return gguf


def _open(path):
    gguf = _import_gguf()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No GGUF file at {path!r}.")
    with open(path, "rb") as file:
        if file.read(4) != b"GGUF":
            raise ValueError(f"{path!r} is not a GGUF file: it does not start with b'GGUF'.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, KeyError, IndexError, OSError) as error:
        raise ValueError(f"{path!r} is not a readable GGUF file ({error}).") from None


def _field(reader, key, default=None, required=False, path=None):
    """The value of a metadata key: a number, bool, string or list."""
    import gguf

    field = reader.fields.get(key)
    if field is None:
        if required:
            raise ValueError(f"{path!r} lacks the GGUF metadata key {key!r}.")
        return default
    kind = field.types[-1]
    if kind == gguf.GGUFValueType.STRING:
        values = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    else:
        values = [field.parts[i].tolist()[0] for i in field.data]
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return values
    return bool(values[0]) if kind == gguf.GGUFValueType.BOOL else values[0]


def _backbone_config(reader, path):
    architecture = _field(reader, "general.architecture", required=True, path=path)
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"{path!r} holds a {architecture!r} model; only Llama-family GGUF files "
            f"(general.architecture in {ARCHITECTURES}) can be converted."
        )

    def key(name, default=None):
        required = default is None
        return _field(reader, f"{architecture}.{name}", default, required, path)

    scaling = key("rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"{path!r}: RoPE scaling {scaling!r} is not supported.")
    hidden_dim, num_heads = key("embedding_length"), key("attention.head_count")
    head_dim = hidden_dim // num_heads
    for name in ("rope.dimension_count", "attention.key_length"):
        if key(name, head_dim) != head_dim:
            raise ValueError(
                f"{path!r}: {architecture}.{name} = {key(name)} differs from "
                f"embedding_length / head_count = {head_dim}; KerasHub's Llama "
                "needs them equal."
            )
    return {
        "num_layers": key("block_count"),
        "hidden_dim": hidden_dim,
        "intermediate_dim": key("feed_forward_length"),
        "num_query_heads": num_heads,
        "num_key_value_heads": key("attention.head_count_kv", num_heads),
        "rope_max_wavelength": key("rope.freq_base", 10000.0),
        "layer_norm_epsilon": key("attention.layer_norm_rms_epsilon", 1e-5),
        "context_length": _field(reader, f"{architecture}.context_length"),
    }


def _tokenizer(reader, path):
    model = _field(reader, "tokenizer.ggml.model", required=True, path=path)
    if model != "gpt2":
        raise ValueError(
            f"{path!r} has a {model!r} tokenizer; only byte-level BPE ('gpt2', as "
            "in SmolLM2, Llama 3, Qwen2) converts to a KerasHub tokenizer here."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens", required=True, path=path)
    merges = _field(reader, "tokenizer.ggml.merges", required=True, path=path)
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    eos = _field(reader, "tokenizer.ggml.eos_token_id", required=True, path=path)
    bos = None
    if _field(reader, "tokenizer.ggml.add_bos_token", False):
        bos = tokens[_field(reader, "tokenizer.ggml.bos_token_id", required=True, path=path)]
    pre = _field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in _PRE_TOKENIZER_OF:
        warnings.warn(
            f"{path!r}: llama.cpp pre-tokenizer {pre!r} has no exact KerasHub "
            "equivalent; using Llama 3's. Check tokenization on your own text.",
            stacklevel=2,
        )
    return GGUFTokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=merges,
        bos_token=bos,
        eos_token=tokens[eos],
        misc_special_tokens=[t for t, kind in zip(tokens, types) if kind == _CONTROL],
        pre_tokenizer=_PRE_TOKENIZER_OF.get(pre, "llama3"),
        chat_template=_field(reader, "tokenizer.chat_template"),
    )


def _check_tensor_names(tensors, num_layers, path):
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{n}.weight" for i in range(num_layers) for n in _BLOCK_TENSORS}
    missing = sorted(expected - set(tensors))
    unknown = sorted(set(tensors) - expected - {"output.weight"})
    if missing or unknown:
        raise ValueError(
            f"{path!r} does not have the tensors of a Llama model: "
            f"missing {missing[:4]}, not understood {unknown[:4]}."
        )


def _dequantize(tensor, path):
    """A tensor as float32, in NumPy (row-major) order: (out, in) for weights."""
    import gguf

    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise ValueError(
            f"{path!r}: tensor {tensor.name!r} has type {tensor.tensor_type.name}, "
            "which gguf.quants cannot dequantize."
        ) from None
    shape = [int(n) for n in reversed(tensor.shape)]
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _unpermute(weights, num_heads):
    """Undo llama.cpp's `permute` of q/k rows: per head, interleaved rotary
    pairs (x0, x1), (x2, x3), ... back to the half-split layout."""
    head_dim = weights.shape[0] // num_heads
    w = weights.reshape(num_heads, head_dim // 2, 2, *weights.shape[1:])
    return w.swapaxes(1, 2).reshape(weights.shape)


def _permute(weights, num_heads):
    """llama.cpp's `permute` of q/k rows (convert_hf_to_gguf.py,
    `LlamaModel.permute`), the inverse of `_unpermute`: per head, the
    half-split layout to interleaved rotary pairs (x0, x1), (x2, x3), ..."""
    head_dim = weights.shape[0] // num_heads
    w = weights.reshape(num_heads, 2, head_dim // 2, *weights.shape[1:])
    return w.swapaxes(1, 2).reshape(weights.shape)


def _set_weights(backbone, read):
    """Copy GGUF tensors, read by name, into the backbone's variables."""
    hidden, heads = backbone.hidden_dim, backbone.num_query_heads
    kv_heads, head_dim = backbone.num_key_value_heads, hidden // heads
    embedding = backbone.token_embedding
    embedding.embeddings.assign(read("token_embd.weight"))
    if not backbone.tie_word_embeddings:
        embedding.reverse_embeddings.assign(read("output.weight").T)
    backbone.layer_norm.scale.assign(read("output_norm.weight"))
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer

        def tensor(name, i=i):
            return read(f"blk.{i}.{name}.weight")

        layer._self_attention_layernorm.scale.assign(tensor("attn_norm"))
        layer._feedforward_layernorm.scale.assign(tensor("ffn_norm"))
        query = _unpermute(tensor("attn_q"), heads)
        key = _unpermute(tensor("attn_k"), kv_heads)
        attention._query_dense.kernel.assign(query.T.reshape(hidden, heads, head_dim))
        attention._key_dense.kernel.assign(key.T.reshape(hidden, kv_heads, head_dim))
        value = tensor("attn_v").T.reshape(hidden, kv_heads, head_dim)
        attention._value_dense.kernel.assign(value)
        output = tensor("attn_output").T.reshape(heads, head_dim, hidden)
        attention._output_dense.kernel.assign(output)
        layer._feedforward_gate_dense.kernel.assign(tensor("ffn_gate").T)
        layer._feedforward_intermediate_dense.kernel.assign(tensor("ffn_up").T)
        layer._feedforward_output_dense.kernel.assign(tensor("ffn_down").T)


def _get_weights(backbone):
    """The backbone's variables as (GGUF name, float32 NumPy array) pairs, in
    llama.cpp's layouts: `_set_weights` backwards."""
    heads, kv_heads = backbone.num_query_heads, backbone.num_key_value_heads

    def numpy(variable):
        return keras.ops.convert_to_numpy(keras.ops.cast(variable, "float32"))

    def matrix(kernel):  # a KerasHub kernel (in, ...) -> llama.cpp's (out, in)
        return numpy(kernel).reshape(kernel.shape[0], -1).T

    embedding = backbone.token_embedding
    yield "token_embd.weight", numpy(embedding.embeddings)
    if not backbone.tie_word_embeddings:
        yield "output.weight", numpy(embedding.reverse_embeddings).T
    yield "output_norm.weight", numpy(backbone.layer_norm.scale)
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        yield f"blk.{i}.attn_norm.weight", numpy(layer._self_attention_layernorm.scale)
        yield f"blk.{i}.ffn_norm.weight", numpy(layer._feedforward_layernorm.scale)
        yield f"blk.{i}.attn_q.weight", _permute(matrix(attention._query_dense.kernel), heads)
        yield f"blk.{i}.attn_k.weight", _permute(matrix(attention._key_dense.kernel), kv_heads)
        yield f"blk.{i}.attn_v.weight", matrix(attention._value_dense.kernel)
        output = numpy(attention._output_dense.kernel)  # (heads, head_dim, hidden)
        yield f"blk.{i}.attn_output.weight", output.reshape(-1, output.shape[-1]).T
        yield f"blk.{i}.ffn_gate.weight", matrix(layer._feedforward_gate_dense.kernel)
        yield f"blk.{i}.ffn_up.weight", matrix(layer._feedforward_intermediate_dense.kernel)
        yield f"blk.{i}.ffn_down.weight", matrix(layer._feedforward_output_dense.kernel)
