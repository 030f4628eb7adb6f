"""Strategies: who writes each response token, and which loss trains on it.

A strategy is a small rule, not a loop. The rollout (`rollout.py`) asks it:

- `decoders`: which models decode during the rollout;
- `score(teacher_logits, student_logits, proposal)`: the statistic its rule
  reads at one position (e.g. AdaSwitch's d_i), recorded in a trace `[B, T]`;
- `teacher_writes(scores, mask)`: a pure, causal function of that trace that
  says where the teacher's token replaces the student's.

The live rollout calls `teacher_writes` on the trace recorded so far, so it
makes exactly the decisions this function makes on the finished trace.
"""

from keras import ops

from adaswitch_keras import divergences


def response_positions(mask):
    """0-based position t of each token inside its response (-1 before it)."""
    return ops.cumsum(ops.cast(mask, "int32"), axis=1) - 1


class Strategy:
    """Base class. Subclasses set the class attributes and override the rule.

    Attributes:
        decoders: models that decode in the rollout: `()` keeps ground truth,
            `("student",)`, `("teacher",)`, or both for per-token mixing.
        ground_truth_rate: probability that a sequence keeps its ground-truth
            response instead of the rollout (GKD's 1 - lambda).
        loss: `"divergence"` (token-level KD) or `"cross_entropy"` (SFT).
        teacher_finishes: once the teacher writes a token of a sequence, it
            writes the rest (AdaSwitch's one-time switch), so the rollout
            stops decoding the student for that sequence.
        draft_length: the rollout's default number of student tokens per
            teacher call. Drafting pays where the teacher seldom steps in
            across a whole batch: before AdaSwitch's switch, not for SKD's
            and SWITCH's per-token interventions (benchmarks/speed.py).
    """

    decoders = ()
    ground_truth_rate = 0.0
    loss = "divergence"
    teacher_finishes = False
    draft_length = 1

    def score(self, teacher_logits, student_logits, proposal):
        """Statistic that the rule reads at one position, `[B]` float32."""
        return ops.zeros(ops.shape(proposal), "float32")

    def teacher_writes(self, scores, mask):
        """bool `[B, T]`: where the teacher's token is kept."""
        mask = ops.cast(mask, "bool")
        return mask if self.decoders == ("teacher",) else ops.zeros_like(mask)

    def get_config(self):
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SFT(Strategy):
    """Ground-truth tokens, cross-entropy loss, no teacher (baseline)."""

    loss = "cross_entropy"


class SupervisedKD(Strategy):
    """Ground-truth tokens, token-level divergence to the teacher."""


class SeqKD(Strategy):
    """The teacher samples the whole response (Kim & Rush 2016)."""

    decoders = ("teacher",)


class OnPolicy(Strategy):
    """The student samples the whole response (GKD with lambda = 1)."""

    decoders = ("student",)


class GKD(Strategy):
    """GKD's data mix (Agarwal et al. 2024): each sequence is sampled by the
    student with probability `lmbda`, else it keeps its ground truth. TRL draws
    once per batch; per sequence is the same in expectation."""

    decoders = ("student",)

    def __init__(self, lmbda=0.5):
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"`lmbda` must be in [0, 1]. Received: lmbda={lmbda}")
        self.lmbda = lmbda
        self.ground_truth_rate = 1.0 - lmbda

    def get_config(self):
        return {"lmbda": self.lmbda}


def ImitKD():
    """ImitKD (Lin et al. 2020): the 50:50 mix, `GKD(lmbda=0.5)`."""
    return GKD(lmbda=0.5)


class SKD(Strategy):
    """Speculative KD (Xu et al. 2024, Algorithm 1): the student proposes each
    token; one outside the teacher's top-K is replaced by a teacher sample.

    Score: the teacher's rank of the proposal (how many tokens the teacher
    puts strictly above it); the teacher writes where rank >= top_k.
    """

    decoders = ("student", "teacher")

    def __init__(self, top_k=25):
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"`top_k` must be an integer >= 1. Received: top_k={top_k}")
        self.top_k = top_k

    def score(self, teacher_logits, student_logits, proposal):
        teacher_logits = ops.cast(teacher_logits, "float32")
        proposal_logit = ops.take_along_axis(
            teacher_logits, ops.expand_dims(proposal, -1), axis=-1
        )
        return ops.sum(ops.cast(teacher_logits > proposal_logit, "float32"), axis=-1)

    def teacher_writes(self, scores, mask):
        return ops.logical_and(ops.cast(mask, "bool"), ops.greater_equal(scores, self.top_k))

    def get_config(self):
        return {"top_k": self.top_k}


class Switch(Strategy):
    """SWITCH (Koo et al. 2025): at response position t the teacher writes the
    token when JSD_beta(P, Q) > tau0 * exp(-decay * t); decided per token."""

    decoders = ("student", "teacher")

    def __init__(self, tau0=0.2, decay=0.05, beta=0.5):
        if tau0 < 0 or decay < 0:
            raise ValueError(
                f"`tau0` and `decay` must be >= 0. Received: tau0={tau0}, decay={decay}"
            )
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"`beta` must be in [0, 1]. Received: beta={beta}")
        self.tau0, self.decay, self.beta = tau0, decay, beta

    def score(self, teacher_logits, student_logits, proposal):
        return divergences.jsd(
            divergences.log_probs(teacher_logits),
            divergences.log_probs(student_logits),
            self.beta,
        )

    def threshold(self, t):
        """tau(t) = tau0 * exp(-decay * t)."""
        return self.tau0 * ops.exp(-self.decay * ops.cast(t, "float32"))

    def teacher_writes(self, scores, mask):
        above = ops.greater(scores, self.threshold(response_positions(mask)))
        return ops.logical_and(ops.cast(mask, "bool"), above)

    def get_config(self):
        return {"tau0": self.tau0, "decay": self.decay, "beta": self.beta}


class AdaSwitch(Strategy):
    """AdaSwitch: the student writes until its divergence spikes, then the
    teacher writes the rest of the sequence (a one-time switch).

    With d_i = KL(P_i || Q_i) at 0-based response position i, the switch index
    is the first i >= L with d_i > K * (1/L) sum_{j=i-L}^{i-1} d_j.

    Args:
        window: L, the length of the sliding window of past divergences.
        k: K, the multiplier of the window mean.
    """

    decoders = ("student", "teacher")
    teacher_finishes = True
    draft_length = 8

    def __init__(self, window=5, k=2.0):
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"`window` must be an integer >= 1. Received: window={window}")
        if not k > 0:
            raise ValueError(f"`k` must be > 0. Received: k={k}")
        self.window, self.k = window, k

    def score(self, teacher_logits, student_logits, proposal):
        return divergences.forward_kl(
            divergences.log_probs(teacher_logits),
            divergences.log_probs(student_logits),
        )

    def first_switch(self, divergences, mask):
        """Switch index per row, as a column of the `[B, T]` trace; T if none.

        `mask` marks the response positions, one contiguous block per row.
        """
        mask = ops.cast(mask, "bool")
        values = ops.where(mask, ops.cast(divergences, "float32"), 0.0)
        length = values.shape[1]
        window_sum = ops.zeros_like(values)
        for lag in range(1, min(self.window, length) + 1):  # d_{i-1} + ... + d_{i-L}
            window_sum = window_sum + ops.concatenate(
                [ops.zeros_like(values[:, :lag]), values[:, :-lag]], axis=1
            )
        spike = values > self.k * (window_sum / self.window)
        eligible = response_positions(mask) >= self.window
        switched = ops.logical_and(ops.logical_and(mask, eligible), spike)
        columns = ops.arange(length, dtype="int32")
        return ops.min(ops.where(switched, columns[None, :], length), axis=1)

    def teacher_writes(self, scores, mask):
        columns = ops.arange(ops.shape(scores)[1], dtype="int32")
        after = columns[None, :] >= self.first_switch(scores, mask)[:, None]
        return ops.logical_and(ops.cast(mask, "bool"), after)

    def get_config(self):
        return {"window": self.window, "k": self.k}


_BY_NAME = {
    "sft": SFT,
    "supervised_kd": SupervisedKD,
    "seqkd": SeqKD,
    "on_policy": OnPolicy,
    "gkd": GKD,
    "imitkd": ImitKD,
    "skd": SKD,
    "switch": Switch,
    "adaswitch": AdaSwitch,
}
NAMES = tuple(_BY_NAME)


def get(identifier):
    """A strategy from an instance or a name such as `"adaswitch"`."""
    if isinstance(identifier, Strategy):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"Unknown strategy {identifier!r}. Pass a Strategy or one of "
        f"{sorted(_BY_NAME)}."
    )
