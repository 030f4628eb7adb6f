"""Strategies: who writes each response token, and which loss trains on it.

A strategy is a small rule, not a loop. The rollout (`rollout.py`) asks it:

- `decoders`: which models decode during the rollout;
- `score(teacher_logits, student_logits, proposal)`: the statistic its rule
  reads at one position (e.g. AdaSwitch's d_i), recorded in a trace `[B, T]`;
- `teacher_writes(scores, mask)`: a pure, causal function of that trace that
  says where the teacher's token replaces the student's.

The live rollout calls `teacher_writes` on the trace recorded so far, so it
makes exactly the decisions this function makes on the finished trace.

Every subclass with a `name` registers itself: `get("adaswitch", k=3.0)`,
the command line's `--strategy` and the tests find it there.
"""

import inspect

from keras import ops

from adaswitch_keras import divergences

_REGISTRY = {}
_NONE = inspect.Parameter.empty  # an argument without a default


def response_positions(mask):
    """0-based position t of each token inside its response (-1 before it)."""
    return ops.cumsum(ops.cast(mask, "int32"), axis=1) - 1


class Strategy:
    """Base class. A subclass sets the class attributes, overrides the rule
    and takes its hyper-parameters as keyword arguments; with a `name` it is
    registered. A complete custom strategy, for example one where the
    teacher writes every token the student is unsure of:

    ```python
    class Unsure(ak.Strategy):
        name = "unsure"
        decoders = ("student", "teacher")

        def __init__(self, threshold=0.5):
            self.threshold = threshold

        def score(self, teacher_logits, student_logits, proposal):
            # The student's probability of its own proposal.
            log_q = ak.divergences.log_probs(student_logits)
            return ops.exp(ops.take_along_axis(log_q, proposal[:, None], axis=-1)[:, 0])

        def teacher_writes(self, scores, mask):
            return ops.logical_and(ops.cast(mask, "bool"), scores < self.threshold)

        def get_config(self):
            return {"threshold": self.threshold}

    distiller = ak.Distiller(teacher, student, strategy="unsure")
    ```

    Attributes:
        name: the registry name (`get(name)`, `--strategy name`).
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

    name = None
    decoders = ()
    ground_truth_rate = 0.0
    loss = "divergence"
    teacher_finishes = False
    draft_length = 1

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name is not None:
            if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
                raise ValueError(
                    f"A strategy named {name!r} is registered already: {_REGISTRY[name]}."
                )
            _REGISTRY[name] = cls

    def score(self, teacher_logits, student_logits, proposal):
        """Statistic that the rule reads at one position, `[B]` float32."""
        return ops.zeros(ops.shape(proposal), "float32")

    def teacher_writes(self, scores, mask):
        """bool `[B, T]`: where the teacher's token is kept."""
        mask = ops.cast(mask, "bool")
        return mask if self.decoders == ("teacher",) else ops.zeros_like(mask)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SFT(Strategy):
    """Ground-truth tokens, cross-entropy loss, no teacher (baseline)."""

    name = "sft"
    loss = "cross_entropy"


class SupervisedKD(Strategy):
    """Ground-truth tokens, token-level divergence to the teacher."""

    name = "supervised_kd"


class SeqKD(Strategy):
    """Sequence-level KD (Kim & Rush 2016): the teacher samples the whole
    response and the student learns it with cross-entropy."""

    name = "seqkd"
    decoders = ("teacher",)
    loss = "cross_entropy"


class SeqKDDivergence(Strategy):
    """SeqKD's data with the token-level divergence to the teacher: the
    teacher samples the whole response (TRL's GKD with `seq_kd=True`)."""

    name = "seqkd_divergence"
    decoders = ("teacher",)


class OnPolicy(Strategy):
    """The student samples the whole response (GKD with lambda = 1)."""

    name = "on_policy"
    decoders = ("student",)


class GKD(Strategy):
    """GKD's data mix (Agarwal et al. 2024): each sequence is sampled by the
    student with probability `lmbda`, else it keeps its ground truth. TRL draws
    once per batch; per sequence is the same in expectation."""

    name = "gkd"
    decoders = ("student",)

    def __init__(self, lmbda=0.5):
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"`lmbda` must be in [0, 1]. Received: lmbda={lmbda}")
        self.lmbda = lmbda
        self.ground_truth_rate = 1.0 - lmbda

    def get_config(self):
        return {"lmbda": self.lmbda}


class ImitKD(GKD):
    """ImitKD (Lin et al. 2020): the 50:50 mix, `GKD(lmbda=0.5)`."""

    name = "imitkd"

    def __init__(self):
        super().__init__(lmbda=0.5)

    def get_config(self):
        return {}


class SKD(Strategy):
    """Speculative KD (Xu et al. 2024, Algorithm 1): the student proposes each
    token; one outside the teacher's top-K is replaced by a teacher sample.

    Score: the teacher's rank of the proposal (how many tokens the teacher
    puts strictly above it); the teacher writes where rank >= top_k.
    """

    name = "skd"
    decoders = ("student", "teacher")

    def __init__(self, top_k=25):
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(f"`top_k` must be an integer >= 1. Received: top_k={top_k}")
        self.top_k = top_k

    def score(self, teacher_logits, student_logits, proposal):
        teacher_logits = ops.cast(teacher_logits, "float32")
        proposal_logit = ops.take_along_axis(teacher_logits, ops.expand_dims(proposal, -1), axis=-1)
        return ops.sum(ops.cast(teacher_logits > proposal_logit, "float32"), axis=-1)

    def teacher_writes(self, scores, mask):
        return ops.logical_and(ops.cast(mask, "bool"), ops.greater_equal(scores, self.top_k))

    def get_config(self):
        return {"top_k": self.top_k}


class Switch(Strategy):
    """SWITCH (Koo et al. 2025): at response position t the teacher writes the
    token when JSD_beta(P, Q) > tau0 * exp(-decay * t); decided per token."""

    name = "switch"
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

    With d_i = D(P_i || Q_i) at 0-based response position i (D is forward
    KL by default), the switch index is the first i >= L with
    d_i > K * (1/L) sum_{j=i-L}^{i-1} d_j.

    Args:
        window: L, the length of the sliding window of past divergences.
        k: K, the multiplier of the window mean.
        divergence: D, a kind of `divergences.token_divergence` (the paper
            ablates forward KL, reverse KL and JSD).
    """

    name = "adaswitch"
    decoders = ("student", "teacher")
    teacher_finishes = True
    draft_length = 8

    def __init__(self, window=5, k=2.0, divergence="forward_kl"):
        if not (isinstance(window, int) and window >= 1):
            raise ValueError(f"`window` must be an integer >= 1. Received: window={window}")
        if not k > 0:
            raise ValueError(f"`k` must be > 0. Received: k={k}")
        if divergence not in divergences.KINDS:
            raise ValueError(
                f"Unknown divergence {divergence!r}. Choose one of {divergences.KINDS}."
            )
        self.window, self.k, self.divergence = window, k, divergence

    def score(self, teacher_logits, student_logits, proposal):
        return divergences.token_divergence(teacher_logits, student_logits, self.divergence)

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
        config = {"window": self.window, "k": self.k}
        if self.divergence != "forward_kl":
            config["divergence"] = self.divergence
        return config


class FixedSwitch(Strategy):
    """The control for where AdaSwitch switches: every sequence switches at
    the same response position p, whatever its divergences, and the teacher
    writes the rest. Set p to an AdaSwitch setting's mean switch position:
    AdaSwitch minus FixedSwitch then asks whether choosing *where* to
    switch matters beyond how much the teacher writes.

    Args:
        position: p, the 0-based response position of the first teacher
            token (0: the teacher writes every token, as in SeqKD).
    """

    name = "fixed_switch"
    decoders = ("student", "teacher")
    teacher_finishes = True
    draft_length = AdaSwitch.draft_length

    def __init__(self, position):
        if not (isinstance(position, int) and position >= 0):
            raise ValueError(f"`position` must be an integer >= 0. Received: position={position}")
        self.position = position

    def teacher_writes(self, scores, mask):
        after = ops.greater_equal(response_positions(mask), self.position)
        return ops.logical_and(ops.cast(mask, "bool"), after)

    def get_config(self):
        return {"position": self.position}


def registered():
    """{name: class} of every registered strategy, in registration order."""
    return dict(_REGISTRY)


def options(name):
    """{argument: default} that the registered strategy `name` takes."""
    parameters = inspect.signature(_class_of(name)).parameters.values()
    return {p.name: p.default for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD}


def get(identifier, **kwargs):
    """A strategy from an instance, or from a registered name and its
    keyword arguments: `get("adaswitch", window=5, k=2.0)`."""
    if isinstance(identifier, Strategy):
        if kwargs:
            raise ValueError(
                f"Arguments {kwargs} were given with a strategy instance {identifier!r}."
            )
        return identifier
    strategy_class = _class_of(identifier)
    unknown = set(kwargs) - set(options(identifier.lower()))
    if unknown:
        raise ValueError(
            f"{strategy_class.__name__} takes {sorted(options(identifier.lower())) or 'no arguments'}; "
            f"received {sorted(unknown)}."
        )
    missing = [key for key, default in options(identifier.lower()).items() if default is _NONE]
    missing = sorted(set(missing) - set(kwargs))
    if missing:
        raise ValueError(f"{strategy_class.__name__} needs {missing}; received {sorted(kwargs)}.")
    return strategy_class(**kwargs)


def _class_of(name):
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        raise ValueError(
            f"Unknown strategy {name!r}. Pass a Strategy or one of {sorted(_REGISTRY)}."
        )
    return _REGISTRY[name.lower()]
