"""LoRA students: only the LoRA factors train, the merged preset reloads with
the same logits, and checkpoints keep the factors (a resumed step equals an
unbroken one)."""

import keras
import keras_hub
import numpy as np
from keras import ops

import adaswitch_keras as ak
from conftest import MAX_NEW_TOKENS
from conftest import SEQUENCE_LENGTH


def lora_student(seed=0, rank=4):
    keras.utils.set_random_seed(seed)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=SEQUENCE_LENGTH)
    return ak.lora.enable(student, rank)


def distiller_for(pair, student):
    distiller = ak.Distiller(
        pair[0],
        student,
        strategy=ak.AdaSwitch(window=2, k=1.2),
        max_new_tokens=MAX_NEW_TOKENS,
        seed=1,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    return distiller


def named_weights(model):
    return {v.path: ops.convert_to_numpy(v).copy() for v in model.weights}


def test_only_the_lora_factors_train(pair, packed_pairs):
    student = lora_student()
    distiller = distiller_for(pair, student)
    trainable = {v.path for v in distiller.trainable_variables}
    assert trainable and all("lora_kernel" in path for path in trainable)
    before = named_weights(student)
    distiller.fit(packed_pairs, batch_size=8, epochs=1, verbose=0)
    after = named_weights(student)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed and changed <= trainable


def test_the_merged_preset_reloads_with_the_same_logits(pair, packed_pairs, tmp_path):
    student = lora_student()
    distiller_for(pair, student).fit(packed_pairs, batch_size=8, epochs=1, verbose=0)
    inputs = {k: packed_pairs[k][:4] for k in ("token_ids", "padding_mask")}
    student.save_to_preset(str(tmp_path / "merged"))
    student.backbone.save_lora_weights(str(tmp_path / "student.lora.h5"))
    merged = keras_hub.models.CausalLM.from_preset(str(tmp_path / "merged"))
    assert not any("lora" in v.path for v in merged.weights)
    expected = ops.convert_to_numpy(student(inputs))
    np.testing.assert_allclose(ops.convert_to_numpy(merged(inputs)), expected, atol=1e-4)
    # The LoRA weights alone, on a fresh copy of the base model, give the same too.
    base = lora_student(seed=0)
    base.backbone.load_lora_weights(str(tmp_path / "student.lora.h5"))
    np.testing.assert_allclose(ops.convert_to_numpy(base(inputs)), expected, atol=1e-4)


def test_a_resumed_lora_run_steps_as_an_unbroken_one(pair, packed_pairs, tmp_path):
    """Keras saves LoRA layers merged and zeroes the factors on load, where
    their gradients vanish; the Distiller's checkpoint keeps them."""
    batch = {k: v[:8] for k, v in packed_pairs.items()}
    unbroken = distiller_for(pair, lora_student())
    unbroken.train_on_batch(batch)
    unbroken.save_weights(str(tmp_path / "after_one.weights.h5"))
    unbroken.train_on_batch(batch)

    resumed = distiller_for(pair, lora_student(seed=5))  # other factors until the load
    resumed.load_weights(str(tmp_path / "after_one.weights.h5"))
    resumed.train_on_batch(batch)
    for a, b in zip(resumed.student.weights, unbroken.student.weights):
        np.testing.assert_allclose(
            ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6, err_msg=b.path
        )
    factors = [v for v in resumed.student.weights if "lora_kernel_b" in v.path]
    assert all(np.abs(ops.convert_to_numpy(v)).max() > 0 for v in factors)
