"""Tiny models of every supported architecture: presets and a distillation step."""

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

import adaswitch_keras as ak
from conftest import arithmetic_pairs


@pytest.mark.parametrize("architecture", ["gpt2", "llama3", "gemma"])
def test_architecture_distils_with_adaswitch(architecture):
    keras.utils.set_random_seed(1)
    tokenizer = ak.tiny.tokenizer(architecture)
    teacher = ak.tiny.causal_lm(architecture, num_layers=2, tokenizer=tokenizer, sequence_length=40)
    student = ak.tiny.causal_lm(architecture, num_layers=1, tokenizer=tokenizer, sequence_length=40)
    distiller = ak.Distiller(
        teacher, student, strategy=ak.AdaSwitch(window=2, k=1.5), max_new_tokens=8
    )
    distiller.compile(optimizer="adam")
    history = distiller.fit(arithmetic_pairs(4), batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0


def test_preset_round_trip_keeps_logits(tmp_path, pair):
    _, student = pair
    student.save_to_preset(str(tmp_path / "student"))
    loaded = keras_hub.models.CausalLM.from_preset(str(tmp_path / "student"))
    inputs = {"token_ids": np.array([[5, 6, 7, 8]]), "padding_mask": np.ones((1, 4), bool)}
    np.testing.assert_allclose(
        ops.convert_to_numpy(loaded(inputs)), ops.convert_to_numpy(student(inputs)), atol=1e-6
    )
    assert (
        loaded.preprocessor.tokenizer.vocabulary_size()
        == student.preprocessor.tokenizer.vocabulary_size()
    )


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown architecture"):
        ak.tiny.causal_lm("bert")
