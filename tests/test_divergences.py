"""Every divergence against a plain NumPy reference."""

import numpy as np
import pytest
from keras import ops

from adaswitch_keras import divergences


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def reference(teacher_logits, student_logits, kind, beta=0.5, alpha=0.1, temperature=1.0):
    p = np.exp(np_log_softmax(teacher_logits.astype(np.float64) / temperature))
    q = np.exp(np_log_softmax(student_logits.astype(np.float64) / temperature))
    if kind == "forward_kl":
        return np_kl(p, q)
    if kind == "reverse_kl":
        return np_kl(q, p)
    if kind == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)
    if kind == "skew_forward_kl":
        return np_kl(p, alpha * p + (1 - alpha) * q)
    if kind == "skew_reverse_kl":
        return np_kl(q, (1 - alpha) * p + alpha * q)
    if kind == "tvd":
        return 0.5 * np.abs(p - q).sum(-1)
    raise AssertionError(kind)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return (
        rng.normal(scale=3.0, size=(2, 5, 11)).astype("float32"),
        rng.normal(scale=3.0, size=(2, 5, 11)).astype("float32"),
    )


@pytest.mark.parametrize("kind", divergences.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_numpy(logits, kind, temperature):
    teacher, student = logits
    got = divergences.token_divergence(teacher, student, kind, temperature=temperature)
    assert tuple(got.shape) == (2, 5)
    want = reference(teacher, student, kind, temperature=temperature)
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_beta_matches_numpy(logits, beta):
    got = divergences.token_divergence(*logits, "jsd", beta=beta)
    want = reference(*logits, "jsd", beta=beta)
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
@pytest.mark.parametrize("kind", ["skew_forward_kl", "skew_reverse_kl"])
def test_skew_alpha_matches_numpy(logits, kind, alpha):
    got = divergences.token_divergence(*logits, kind, alpha=alpha)
    want = reference(*logits, kind, alpha=alpha)
    np.testing.assert_allclose(ops.convert_to_numpy(got), want, rtol=1e-4, atol=1e-6)


def test_jsd_ends_are_forward_and_reverse_kl(logits):
    """TRL #3043: beta = 0 / 1 must give the KLs, not 0 and not NaN."""
    forward = reference(*logits, "forward_kl")
    reverse = reference(*logits, "reverse_kl")
    at_0 = ops.convert_to_numpy(divergences.token_divergence(*logits, "jsd", beta=0.0))
    at_1 = ops.convert_to_numpy(divergences.token_divergence(*logits, "jsd", beta=1.0))
    assert np.all(forward > 0.01) and np.all(reverse > 0.01)
    np.testing.assert_allclose(at_0, forward, rtol=1e-4)
    np.testing.assert_allclose(at_1, reverse, rtol=1e-4)


def test_jsd_mixture_is_in_probability_space():
    """TRL #2204: M = beta P + (1-beta) Q, not a mixture of log-probs. For
    disjoint-ish peaks JSD(0.5) stays below log 2; a log-space mixture does not."""
    teacher = np.array([[[30.0, 0.0, 0.0]]], "float32")
    student = np.array([[[0.0, 30.0, 0.0]]], "float32")
    got = float(ops.convert_to_numpy(divergences.token_divergence(teacher, student, "jsd")).item())
    assert np.log(2) - 1e-3 < got <= np.log(2) + 1e-5


def test_large_logits_stay_finite():
    teacher = np.array([[[1e4, -1e4, 0.0]]], "float32")
    student = np.array([[[-1e4, 1e4, 0.0]]], "float32")
    for kind in divergences.KINDS:
        value = ops.convert_to_numpy(divergences.token_divergence(teacher, student, kind))
        assert np.all(np.isfinite(value)), kind


def test_identical_distributions_give_zero(logits):
    teacher, _ = logits
    for kind in divergences.KINDS:
        value = ops.convert_to_numpy(divergences.token_divergence(teacher, teacher, kind))
        np.testing.assert_allclose(value, 0.0, atol=1e-5, err_msg=kind)


def test_masked_mean_ignores_masked_tokens_and_counts_tokens():
    """TRL #4105: divide by the number of response tokens, not by T*V."""
    values = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], "float32")
    mask = np.array([[0, 1, 1, 0], [0, 0, 1, 1]], "float32")
    got = float(ops.convert_to_numpy(divergences.masked_mean(values, mask)))
    assert got == pytest.approx((2 + 3 + 7 + 8) / 4)
    changed = values.copy()
    changed[mask == 0] = 1e6  # prompt and padding positions
    again = float(ops.convert_to_numpy(divergences.masked_mean(changed, mask)))
    assert again == pytest.approx(got)


def test_masked_mean_of_empty_mask_is_zero_not_nan():
    value = divergences.masked_mean(np.ones((2, 3), "float32"), np.zeros((2, 3), "float32"))
    assert float(ops.convert_to_numpy(value)) == 0.0


def test_bad_arguments_are_clear_errors(logits):
    teacher, student = logits
    with pytest.raises(ValueError, match="teacher 11, student 7"):
        divergences.token_divergence(teacher, student[..., :7])
    with pytest.raises(ValueError, match="Unknown divergence"):
        divergences.token_divergence(teacher, student, "kl")
    with pytest.raises(ValueError, match="beta"):
        divergences.token_divergence(teacher, student, "jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        divergences.token_divergence(teacher, student, temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        divergences.token_divergence(teacher, student, "skew_forward_kl", alpha=0.0)


def test_masked_mean_keeps_the_values_dtype_and_divides_by_one_token():
    values = np.array([[3.0, 5.0]], "float16")
    mean = divergences.masked_mean(values, np.array([[True, False]]))
    assert ops.convert_to_numpy(mean).dtype == np.float16
    assert float(ops.convert_to_numpy(mean)) == 3.0  # one token: its value, not half of it
