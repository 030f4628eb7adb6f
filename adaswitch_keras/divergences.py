"""Token-level divergences between teacher and student next-token distributions.

Every function takes logits of shape `[..., V]` and returns one value per
position, `[...]`. They work in log space in float32: `log p = log_softmax(z/T)`.
P is the teacher's distribution, Q the student's.
"""

import math

from keras import ops

# An offline teacher's batch keys (`teacher_cache`): its top-k token ids and
# log-probabilities, `[B, T, k]`, column c for the token at c.
TOP_K_KEYS = ("teacher_top_k_ids", "teacher_top_k_log_probs")

KINDS = (
    "forward_kl",
    "reverse_kl",
    "jsd",
    "skew_forward_kl",
    "skew_reverse_kl",
    "tvd",
)


def log_probs(logits, temperature=1.0):
    """log softmax(z / T) in float32 (stable under mixed precision)."""
    return ops.log_softmax(ops.cast(logits, "float32") / temperature, axis=-1)


def _kl(log_p, log_q):
    """KL(p || q) = sum_v p_v (log p_v - log q_v)."""
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)


def _log_mixture(log_p, log_q, weight_p):
    """log(w p + (1 - w) q), mixed in probability space via log-sum-exp."""
    return ops.logsumexp(
        ops.stack([log_p + math.log(weight_p), log_q + math.log(1.0 - weight_p)]),
        axis=0,
    )


def forward_kl(log_p, log_q):
    """KL(P || Q): mean-seeking; the default (AdaSwitch, SKD)."""
    return _kl(log_p, log_q)


def reverse_kl(log_p, log_q):
    """KL(Q || P): mode-seeking."""
    return _kl(log_q, log_p)


def jsd(log_p, log_q, beta=0.5):
    """Generalized JSD of GKD (Agarwal et al. 2024, eq. 3).

    JSD(beta) = beta KL(P || M) + (1 - beta) KL(Q || M), M = beta P + (1-beta) Q.
    Both ends vanish as written, so, as in GKD and TRL, beta = 0 means forward
    KL(P || Q) and beta = 1 means reverse KL(Q || P).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"`beta` must be in [0, 1]. Received: beta={beta}")
    if beta == 0.0:
        return forward_kl(log_p, log_q)
    if beta == 1.0:
        return reverse_kl(log_p, log_q)
    log_m = _log_mixture(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def skew_forward_kl(log_p, log_q, alpha=0.1):
    """Skew KL of DistiLLM (Ko et al. 2024): KL(P || a P + (1 - a) Q)."""
    _check_alpha(alpha)
    return _kl(log_p, _log_mixture(log_p, log_q, alpha))


def skew_reverse_kl(log_p, log_q, alpha=0.1):
    """Skew reverse KL of DistiLLM: KL(Q || (1 - a) P + a Q)."""
    _check_alpha(alpha)
    return _kl(log_q, _log_mixture(log_p, log_q, 1.0 - alpha))


def tvd(log_p, log_q):
    """Total variation distance: 1/2 sum_v |p_v - q_v|."""
    return 0.5 * ops.sum(ops.abs(ops.exp(log_p) - ops.exp(log_q)), axis=-1)


def _check_alpha(alpha):
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must be in (0, 1). Received: alpha={alpha}")


def token_divergence(
    teacher_logits,
    student_logits,
    kind="forward_kl",
    *,
    beta=0.5,
    alpha=0.1,
    temperature=1.0,
):
    """Per-token divergence between teacher and student logits `[..., V]`.

    Both logits are divided by `temperature`. Their vocabularies must agree:
    slice padded embedding rows away first (the `Distiller` slices both to the
    tokenizer's vocabulary size).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown divergence {kind!r}. Choose one of {KINDS}.")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
    teacher_vocab, student_vocab = teacher_logits.shape[-1], student_logits.shape[-1]
    if teacher_vocab != student_vocab:
        raise ValueError(
            "Teacher and student logits have different vocabulary sizes "
            f"(teacher {teacher_vocab}, student {student_vocab}). Slice both to "
            "the shared tokenizer vocabulary size first."
        )
    log_p = log_probs(teacher_logits, temperature)
    log_q = log_probs(student_logits, temperature)
    return _of_kind(kind, log_p, log_q, beta, alpha)


def top_k_divergence(
    teacher_top_k_log_probs,
    teacher_top_k_ids,
    student_logits,
    kind="forward_kl",
    *,
    beta=0.5,
    alpha=0.1,
):
    """Per-token divergence from the teacher's top-k log-probabilities alone.

    Both distributions are reduced to k + 1 buckets: the teacher's k most
    likely tokens, and one tail bucket holding the rest of each model's mass,
    log(1 - sum_{v in top-k} p_v), as DistillKit and MaxText do; then `kind`
    is taken over the buckets. With k = V the tail is empty and this equals
    `token_divergence` at temperature 1 (the cache holds temperature-1
    log-probabilities, so no other temperature can be applied).

    Args:
        teacher_top_k_log_probs: `[..., k]`, log-softmax over the whole vocabulary.
        teacher_top_k_ids: `[..., k]`, the tokens they belong to.
        student_logits: `[..., V]`.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown divergence {kind!r}. Choose one of {KINDS}.")
    log_q_all = log_probs(student_logits)
    ids = ops.cast(teacher_top_k_ids, "int32")
    log_p = _with_tail(ops.cast(teacher_top_k_log_probs, "float32"))
    log_q = _with_tail(ops.take_along_axis(log_q_all, ids, axis=-1))
    return _of_kind(kind, log_p, log_q, beta, alpha)


def _with_tail(log_top_k):
    """`[..., k + 1]`: the k log-probabilities and log(1 - their mass)."""
    mass = ops.sum(ops.exp(log_top_k), axis=-1, keepdims=True)
    tail = ops.log(ops.maximum(1.0 - mass, 1e-30))
    return ops.concatenate([log_top_k, tail], axis=-1)


def _of_kind(kind, log_p, log_q, beta, alpha):
    if kind == "jsd":
        return jsd(log_p, log_q, beta)
    if kind == "skew_forward_kl":
        return skew_forward_kl(log_p, log_q, alpha)
    if kind == "skew_reverse_kl":
        return skew_reverse_kl(log_p, log_q, alpha)
    return {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tvd": tvd}[kind](log_p, log_q)


def masked_mean(values, mask):
    """sum(values * mask) / sum(mask): the mean over unmasked tokens of the
    whole batch (not over B*T, not a mean of per-sequence means)."""
    values = ops.convert_to_tensor(values)
    mask = ops.cast(mask, values.dtype)
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)
