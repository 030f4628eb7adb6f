"""Tiny KerasHub causal LMs built from config, for tests, tutorials and demos.

`causal_lm("qwen2")` gives a real KerasHub `CausalLM` (backbone,
tokenizer, preprocessor) small enough to train on a CPU. Teacher and student
built with the same `architecture` share one tokenizer, as distillation needs.
Save one with `model.save_to_preset(dir)` and load it back with
`keras_hub.models.CausalLM.from_preset(dir)`.
"""

import io

import keras_hub
from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

ARCHITECTURES = ("qwen2", "gpt2", "llama3", "gemma")

# A few merges make the tokenizer a real BPE without a training step.
_MERGES = ["Ġ t", "h e", "Ġt he", "i n", "e r", "Ġ a", "o n", "r e"]
_SPECIAL_TOKENS = {
    "qwen2": ["<|endoftext|>"],
    "gpt2": ["<|endoftext|>"],
    "llama3": [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eot_id|>",
    ],
}
_CLASSES = {
    "qwen2": ("QwenTokenizer", "QwenBackbone", "QwenCausalLMPreprocessor", "QwenCausalLM"),
    "gpt2": ("GPT2Tokenizer", "GPT2Backbone", "GPT2CausalLMPreprocessor", "GPT2CausalLM"),
    "llama3": ("Llama3Tokenizer", "Llama3Backbone", "Llama3CausalLMPreprocessor", "Llama3CausalLM"),
    "gemma": ("GemmaTokenizer", "GemmaBackbone", "GemmaCausalLMPreprocessor", "GemmaCausalLM"),
}


def _byte_level_vocabulary(special_tokens, size=None):
    """The 256 byte symbols of byte-level BPE, the merged symbols, specials,
    then unused filler tokens up to `size`."""
    _, symbols = bytes_to_unicode()
    tokens = list(symbols) + ["".join(m.split()) for m in _MERGES] + special_tokens
    tokens += [f"<|unused_{i}|>" for i in range(max((size or 0) - len(tokens), 0))]
    return {token: i for i, token in enumerate(tokens)}


def _sentencepiece_proto():
    """A small SentencePiece BPE model with byte fallback, trained in memory."""
    import sentencepiece

    corpus = [
        "the quick brown fox jumps over the lazy dog",
        "question: what is 12 plus 7? answer: 19",
        "teachers and students write tokens one at a time",
    ]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 20),
        model_writer=model,
        vocab_size=320,
        model_type="BPE",
        byte_fallback=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        minloglevel=2,
    )
    return model.getvalue()


def tokenizer(architecture="qwen2", size=None):
    """The architecture's KerasHub tokenizer over a tiny in-memory vocabulary.

    `size` pads a byte-level vocabulary with unused tokens to a real one's
    size (151,936 for Qwen2), so that logits are as wide as a real model's.
    """
    return _new_tokenizer(architecture, size)


def _new_tokenizer(architecture, size=None):
    _check_architecture(architecture)
    tokenizer_class = getattr(keras_hub.tokenizers, _CLASSES[architecture][0])
    if architecture == "gemma":
        if size is not None:
            raise ValueError("`size` pads byte-level vocabularies only, not Gemma's.")
        return tokenizer_class(proto=_sentencepiece_proto())
    return tokenizer_class(
        vocabulary=_byte_level_vocabulary(_SPECIAL_TOKENS[architecture], size),
        merges=_MERGES,
    )


def causal_lm(
    architecture="qwen2",
    *,
    num_layers=2,
    hidden_dim=32,
    num_heads=4,
    intermediate_dim=64,
    sequence_length=64,
    tokenizer=None,
    vocabulary_size=None,
    dtype=None,
):
    """A randomly initialised KerasHub `CausalLM` with a preprocessor.

    `vocabulary_size` pads the embedding table beyond the tokenizer's size, as
    real checkpoints do (e.g. 152064 rows for 151646 Qwen2 tokens).
    """
    _check_architecture(architecture)
    tokenizer = tokenizer or _new_tokenizer(architecture)
    _, backbone_name, preprocessor_name, lm_name = _CLASSES[architecture]
    vocabulary_size = vocabulary_size or tokenizer.vocabulary_size()
    config = {
        "vocabulary_size": vocabulary_size,
        "num_layers": num_layers,
        "hidden_dim": hidden_dim,
        "intermediate_dim": intermediate_dim,
        "dtype": dtype,
    }
    if architecture == "gpt2":
        config.update(num_heads=num_heads, max_sequence_length=sequence_length, dropout=0.0)
    else:
        config.update(num_query_heads=num_heads, num_key_value_heads=max(num_heads // 2, 1))
    if architecture == "gemma":
        config.update(head_dim=hidden_dim // num_heads)
    backbone = getattr(keras_hub.models, backbone_name)(**config)
    preprocessor = getattr(keras_hub.models, preprocessor_name)(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return getattr(keras_hub.models, lm_name)(backbone=backbone, preprocessor=preprocessor)


def _check_architecture(architecture):
    if architecture not in ARCHITECTURES:
        raise ValueError(f"Unknown architecture {architecture!r}. Choose one of {ARCHITECTURES}.")
