"""Each strategy's rule against a plain NumPy loop."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

import adaswitch_keras as ak
from adaswitch_keras import strategies
from conftest import every_strategy
from test_divergences import reference


def np_first_switch(trace, mask, window, k):
    """The paper's rule, written as a loop over response positions."""
    batch, length = trace.shape
    result = np.full(batch, length)
    for b in range(batch):
        columns = np.flatnonzero(mask[b])
        d = trace[b, columns]
        for i in range(window, len(d)):
            if d[i] > k * d[i - window : i].mean():
                result[b] = columns[i]
                break
    return result


def random_traces(seed, batch=64, length=24):
    rng = np.random.default_rng(seed)
    trace = rng.gamma(2.0, 0.5, size=(batch, length)).astype("float32")
    spikes = rng.random((batch, length)) < 0.08
    trace[spikes] *= rng.uniform(2.0, 10.0, size=spikes.sum())
    start = rng.integers(0, length // 2, size=batch)  # prompt lengths
    stop = np.minimum(start + rng.integers(0, length, size=batch), length)
    columns = np.arange(length)
    mask = (columns >= start[:, None]) & (columns < stop[:, None])
    return trace, mask


@pytest.mark.parametrize("window,k", [(1, 1.5), (3, 2.0), (5, 2.0), (10, 3.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_adaswitch_first_switch_matches_loop(window, k, seed):
    trace, mask = random_traces(seed)
    rule = ak.AdaSwitch(window=window, k=k)
    got = ops.convert_to_numpy(rule.first_switch(trace, mask))
    want = np_first_switch(trace, mask, window, k)
    np.testing.assert_array_equal(got, want)
    assert (want < trace.shape[1]).any() and (want == trace.shape[1]).any()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_adaswitch_switches_on_the_divergence_it_is_given(kind):
    """AdaSwitch(divergence=kind) scores with that divergence and switches
    where the paper's rule says on a NumPy trace of it; forward KL, reverse
    KL and JSD disagree on some rows of the same logits."""
    rng = np.random.default_rng(3)
    teacher = rng.normal(scale=2.0, size=(32, 16, 9)).astype("float32")
    student = rng.normal(scale=2.0, size=(32, 16, 9)).astype("float32")
    mask = np.ones((32, 16), bool)
    rule = ak.AdaSwitch(window=3, k=1.5, divergence=kind)
    scores = ops.convert_to_numpy(rule.score(teacher, student, None))
    np.testing.assert_allclose(scores, reference(teacher, student, kind), rtol=1e-4, atol=1e-6)
    got = ops.convert_to_numpy(rule.first_switch(scores, mask))
    np.testing.assert_array_equal(
        got, np_first_switch(reference(teacher, student, kind), mask, 3, 1.5)
    )
    others = [
        np_first_switch(reference(teacher, student, other), mask, 3, 1.5)
        for other in ("forward_kl", "reverse_kl", "jsd")
        if other != kind
    ]
    assert all((got != other).any() for other in others)


def test_adaswitch_ignores_spikes_before_the_window_fills():
    trace = np.array([[0.1, 9.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]], "float32")
    mask = np.ones_like(trace, bool)
    rule = ak.AdaSwitch(window=3, k=2.0)
    assert int(ops.convert_to_numpy(rule.first_switch(trace, mask))[0]) == 8
    trace[0, 6] = 9.0  # i = 6 >= L: switches there
    assert int(ops.convert_to_numpy(rule.first_switch(trace, mask))[0]) == 6


def test_adaswitch_window_skips_the_prompt():
    """The window counts response positions: a spike at the 2nd response token
    must not switch even when prompt columns precede it."""
    trace = np.array([[5.0, 5.0, 5.0, 0.1, 9.0, 0.1, 0.1, 9.0]], "float32")
    mask = np.array([[0, 0, 0, 1, 1, 1, 1, 1]], bool)
    got = ops.convert_to_numpy(ak.AdaSwitch(window=3, k=2.0).first_switch(trace, mask))
    np.testing.assert_array_equal(got, np_first_switch(trace, mask, 3, 2.0))
    assert got[0] == 7


def test_adaswitch_teacher_writes_everything_after_the_switch():
    trace, mask = random_traces(3)
    rule = ak.AdaSwitch(window=3, k=2.0)
    writes = ops.convert_to_numpy(rule.teacher_writes(trace, mask))
    switch = np_first_switch(trace, mask, 3, 2.0)
    columns = np.arange(trace.shape[1])
    np.testing.assert_array_equal(writes, mask & (columns[None] >= switch[:, None]))


def test_switch_rule_matches_threshold_loop():
    trace, mask = random_traces(4)
    rule = ak.Switch(tau0=2.0, decay=0.1)
    got = ops.convert_to_numpy(rule.teacher_writes(trace, mask))
    want = np.zeros_like(mask)
    for b in range(trace.shape[0]):
        for t, column in enumerate(np.flatnonzero(mask[b])):
            want[b, column] = trace[b, column] > 2.0 * np.exp(-0.1 * t)
    np.testing.assert_array_equal(got, want)
    assert want.any() and (mask & ~want).any()


def test_switch_score_is_jsd_half():
    rng = np.random.default_rng(0)
    teacher, student = rng.normal(size=(2, 4, 9)).astype("float32")
    got = ops.convert_to_numpy(ak.Switch().score(teacher, student, None))
    want = ops.convert_to_numpy(ak.divergences.token_divergence(teacher, student, "jsd", beta=0.5))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_skd_score_is_teacher_rank_of_the_proposal():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(32, 50)).astype("float32")
    proposal = rng.integers(0, 50, size=32).astype("int32")
    rank = ops.convert_to_numpy(ak.SKD(top_k=5).score(teacher, None, proposal))
    order = np.argsort(-teacher, axis=1)
    want = np.array([np.flatnonzero(order[b] == proposal[b])[0] for b in range(32)])
    np.testing.assert_array_equal(rank, want)
    in_top_k = rank < 5
    writes = ops.convert_to_numpy(
        ak.SKD(top_k=5).teacher_writes(rank[:, None], np.ones((32, 1), bool))
    )[:, 0]
    np.testing.assert_array_equal(writes, ~in_top_k)


@pytest.mark.parametrize("position", [0, 1, 3, 30])
def test_fixed_switch_teacher_writes_from_its_position_on(position):
    """Response position p is the first teacher token in every row, whatever
    the scores; p - 1 is the student's; a response of at most p tokens never
    switches."""
    trace, mask = random_traces(5)
    writes = ops.convert_to_numpy(ak.FixedSwitch(position=position).teacher_writes(trace, mask))
    want = np.zeros_like(mask)
    for b in range(mask.shape[0]):
        for t, column in enumerate(np.flatnonzero(mask[b])):
            want[b, column] = t >= position
    np.testing.assert_array_equal(writes, want)
    assert (mask.sum(1) <= position).any() or position == 0


def test_fixed_source_strategies():
    mask = np.array([[0, 1, 1, 0]], bool)
    scores = np.ones((1, 4), "float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(ak.SeqKD().teacher_writes(scores, mask)), mask
    )
    for strategy in (ak.OnPolicy(), ak.GKD(), ak.SFT(), ak.SupervisedKD()):
        assert not ops.convert_to_numpy(strategy.teacher_writes(scores, mask)).any()
    assert ak.ImitKD().ground_truth_rate == 0.5
    assert ak.GKD(lmbda=1.0).ground_truth_rate == 0.0
    assert ak.SFT().loss == "cross_entropy" and ak.SupervisedKD().loss == "divergence"


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: ak.AdaSwitch(window=0), "window"),
        (lambda: ak.AdaSwitch(window=2.5), "window"),
        (lambda: ak.AdaSwitch(k=0.0), "`k`"),
        (lambda: ak.SKD(top_k=0), "top_k"),
        (lambda: ak.GKD(lmbda=1.5), "lmbda"),
        (lambda: ak.Switch(tau0=-1.0), "tau0"),
        (lambda: ak.FixedSwitch(position=-1), "position"),
        (lambda: ak.FixedSwitch(position=2.0), "position"),
        (lambda: strategies.get("nope"), "Unknown strategy"),
    ],
)
def test_out_of_range_parameters_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_get_by_name_with_arguments():
    assert isinstance(strategies.get("adaswitch"), ak.AdaSwitch)
    assert isinstance(strategies.get("SKD"), ak.SKD)
    assert strategies.get("imitkd").lmbda == 0.5
    assert strategies.get("adaswitch", window=3, k=4.0).get_config() == {"window": 3, "k": 4.0}
    with pytest.raises(
        ValueError, match=r"AdaSwitch takes \['divergence', 'k', 'window'\]; received \['top_k'\]"
    ):
        strategies.get("adaswitch", top_k=3)


@pytest.mark.parametrize("strategy", every_strategy(), ids=repr)
def test_every_registered_strategy_round_trips_its_config(strategy):
    again = type(strategy).from_config(strategy.get_config())
    assert repr(again) == repr(strategy)
    assert (
        strategies.get(strategy.name, **strategy.get_config()).get_config() == strategy.get_config()
    )


def test_the_custom_strategy_of_the_docstring_registers_and_rolls_out(pair, batch):
    code = ak.Strategy.__doc__.split("```python")[1].split("```")[0]
    code = "\n".join(line[4:] for line in code.splitlines())  # the docstring's indent
    teacher, student = pair
    namespace = {"ak": ak, "ops": ops, "teacher": teacher, "student": student}
    try:
        exec(code, namespace)
        distiller = namespace["distiller"]
        assert isinstance(distiller.strategy, namespace["Unsure"])
        out = distiller.rollout(
            {k: batch[k] for k in ("token_ids", "padding_mask", "response_mask")}
        )
        out = {k: ops.convert_to_numpy(v) for k, v in out.items()}
        rule = ops.convert_to_numpy(
            distiller.strategy.teacher_writes(out["scores"], out["response_mask"])
        )
        np.testing.assert_array_equal(out["teacher_token_mask"], rule)
        assert 0 < rule.sum() < out["response_mask"].sum()
    finally:
        strategies._REGISTRY.pop("unsure", None)


# -- the rules' boundaries, on purpose (ties, the first eligible position,
# the window's edges, rank == top_k), not by the luck of a random draw ------
def _first_switch(rule, trace, mask=None):
    trace = np.array([trace], "float32")
    mask = np.ones(trace.shape, bool) if mask is None else np.array([mask], bool)
    return int(ops.convert_to_numpy(rule.first_switch(trace, mask))[0])


def test_adaswitch_threshold_is_strict():
    """d_i equal to K x the window mean does not switch; just above does."""
    rule = ak.AdaSwitch(window=2, k=2.0)
    assert _first_switch(rule, [1.0, 1.0, 2.0, 1.0, 1.0]) == 5  # 2 = 2 x mean(1, 1): a tie
    assert _first_switch(rule, [1.0, 1.0, 2.001, 1.0, 1.0]) == 2
    assert _first_switch(ak.AdaSwitch(window=1, k=1.0), [0.0, 0.0, 0.0]) == 3  # 0 > 0 is false


def test_adaswitch_first_eligible_position_is_the_window_length():
    rule = ak.AdaSwitch(window=3, k=2.0)
    assert _first_switch(rule, [1.0, 1.0, 1.0, 9.0, 1.0, 1.0]) == 3  # i = L: the window is full
    assert _first_switch(rule, [1.0, 1.0, 9.0, 1.0, 1.0, 1.0]) == 6  # i = L - 1 never switches
    # the same with a prompt before the response: positions count from the response
    mask = [False, False, True, True, True, True, True, True]
    assert _first_switch(rule, [0.0, 0.0, 1.0, 1.0, 1.0, 9.0, 1.0, 1.0], mask) == 5
    assert _first_switch(rule, [0.0, 0.0, 1.0, 1.0, 9.0, 1.0, 1.0, 1.0], mask) == 8


def test_adaswitch_window_holds_exactly_the_last_l_divergences():
    rule = ak.AdaSwitch(window=2, k=2.0)
    # d_{i-L-1} = 100 is outside the window of i = 3: mean(1, 1) = 1, and 2.5 > 2.
    assert _first_switch(rule, [100.0, 1.0, 1.0, 2.5]) == 3
    # d_{i-L} = 10 is inside it: mean(10, 1) = 5.5, and 5 < 11 (no switch anywhere).
    assert _first_switch(rule, [1.0, 10.0, 1.0, 5.0]) == 4
    # d_i itself is not: mean(1, 1) = 1 at i = 2, and 3 > 2 switches.
    assert _first_switch(rule, [1.0, 1.0, 3.0]) == 2


def test_switch_threshold_is_strict_and_starts_at_the_first_response_token():
    mask = np.array([[False, False, True, True, True, True]])
    # tau(t) = 0.25 * 2^-t at response positions t = 0, 1, 2, 3: 0.25, 0.125, 0.0625, 0.03125.
    rule = ak.Switch(tau0=0.25, decay=float(np.log(2.0)))
    scores = np.array([[9.0, 9.0, 0.2, 0.1, 0.05, 0.04]], "float32")
    writes = ops.convert_to_numpy(rule.teacher_writes(scores, mask))
    np.testing.assert_array_equal(writes, [[False, False, False, False, False, True]])
    ties = ak.Switch(tau0=0.25, decay=0.0)  # tau = 0.25 everywhere: a score of 0.25 is a tie
    scores = np.array([[0.0, 0.0, 0.25, 0.2500001, 0.25, 0.0]], "float32")
    writes = ops.convert_to_numpy(ties.teacher_writes(scores, mask))
    np.testing.assert_array_equal(writes, [[False, False, False, True, False, False]])


def test_skd_rank_counts_strictly_higher_logits_and_writes_from_rank_top_k():
    """Ties count in the proposal's favour; the teacher writes at rank == top_k."""
    teacher = np.array([[3.0, 2.0, 2.0, 2.0, 1.0, 0.0]] * 3, "float32")
    proposal = np.array([1, 4, 0], "int32")  # logits 2 (tied), 1 and 3
    rank = ops.convert_to_numpy(ak.SKD(top_k=1).score(teacher, None, proposal))
    np.testing.assert_array_equal(rank, [1, 4, 0])
    mask = np.ones((3, 1), bool)
    for top_k, want in [
        (1, [True, True, False]),
        (2, [False, True, False]),
        (4, [False, True, False]),
        (5, [False, False, False]),
    ]:
        writes = ops.convert_to_numpy(ak.SKD(top_k=top_k).teacher_writes(rank[:, None], mask))
        np.testing.assert_array_equal(writes[:, 0], want, err_msg=f"top_k={top_k}")


# Values whose sums and K-multiples are exact in float32: ties are frequent.
TIED = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    data=st.data(),
    window=st.integers(1, 4),
    k=st.sampled_from([1.0, 2.0, 4.0]),
    length=st.integers(1, 10),
)
def test_adaswitch_matches_the_loop_on_tied_traces(data, window, k, length):
    trace = np.array([data.draw(st.lists(TIED, min_size=length, max_size=length))], "float32")
    start = data.draw(st.integers(0, length))
    mask = (np.arange(length) >= start)[None, :]
    got = ops.convert_to_numpy(ak.AdaSwitch(window=window, k=k).first_switch(trace, mask))
    np.testing.assert_array_equal(got, np_first_switch(trace, mask, window, k))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), length=st.integers(1, 8), tau0=TIED)
def test_switch_matches_the_loop_on_tied_scores(data, length, tau0):
    scores = np.array([data.draw(st.lists(TIED, min_size=length, max_size=length))], "float32")
    start = data.draw(st.integers(0, length))
    mask = (np.arange(length) >= start)[None, :]
    got = ops.convert_to_numpy(ak.Switch(tau0=tau0, decay=0.0).teacher_writes(scores, mask))
    want = mask & (scores > tau0)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    logits=st.lists(st.integers(0, 3), min_size=6, max_size=6),
    proposal=st.integers(0, 5),
    top_k=st.integers(1, 6),
)
def test_skd_matches_the_count_on_tied_logits(logits, proposal, top_k):
    teacher = np.array([logits], "float32")
    rank = ops.convert_to_numpy(ak.SKD(top_k=top_k).score(teacher, None, np.array([proposal])))
    want = sum(value > logits[proposal] for value in logits)
    assert rank[0] == want
    writes = ops.convert_to_numpy(ak.SKD(top_k=top_k).teacher_writes(rank[:, None], [[True]]))
    assert bool(writes[0, 0]) == (want >= top_k)


def test_a_rule_that_reads_no_score_records_zeros():
    """The base score (FixedSwitch's, the fixed-source strategies'): float32
    zeros, one per row, whatever the logits."""
    rng = np.random.default_rng(2)
    teacher, student = rng.normal(size=(2, 3, 7)).astype("float32")
    score = ak.FixedSwitch(position=1).score(teacher, student, np.array([4, 0, 6], "int32"))
    assert ops.convert_to_numpy(score).dtype == np.float32
    np.testing.assert_array_equal(ops.convert_to_numpy(score), np.zeros(3, "float32"))


# -- what mutation testing found unpinned (docs/results/mutation.md) ---------
@pytest.mark.parametrize("strategy", every_strategy(), ids=repr)
def test_every_rule_returns_a_bool_mask_of_the_traces_shape(strategy):
    trace, mask = random_traces(6, batch=4, length=9)
    writes = strategy.teacher_writes(trace, mask.astype("int32"))  # any mask dtype
    assert ops.convert_to_numpy(writes).dtype == bool
    assert tuple(ops.shape(writes)) == mask.shape


def test_defaults_are_the_papers_and_boundaries_of_the_arguments_are_accepted():
    assert ak.AdaSwitch().get_config() == {"window": 5, "k": 2.0}
    assert ak.SKD().top_k == 25 and ak.SKD(top_k=1).top_k == 1
    assert ak.Switch().get_config() == {"tau0": 0.2, "decay": 0.05, "beta": 0.5}
    assert ak.GKD().lmbda == 0.5
    assert ak.GKD(lmbda=0.0).ground_truth_rate == 1.0
    assert ak.GKD(lmbda=1.0).ground_truth_rate == 0.0
    assert ak.FixedSwitch(position=0).position == 0
    with pytest.raises(ValueError, match=r"FixedSwitch needs \['position'\]"):
        strategies.get("fixed_switch")


def test_repr_names_the_class_and_its_arguments():
    assert repr(ak.AdaSwitch(window=3, k=4.0)) == "AdaSwitch(window=3, k=4.0)"
    assert repr(ak.AdaSwitch(divergence="jsd")) == "AdaSwitch(window=5, k=2.0, divergence='jsd')"
    assert repr(ak.SFT()) == "SFT()"


def test_a_non_default_switching_divergence_round_trips():
    strategy = strategies.get("adaswitch", window=3, k=1.5, divergence="reverse_kl")
    assert strategy.get_config() == {"window": 3, "k": 1.5, "divergence": "reverse_kl"}
    assert ak.AdaSwitch.from_config(strategy.get_config()).divergence == "reverse_kl"


def test_the_registry_holds_every_strategy_class_by_name():
    registry = strategies.registered()
    assert registry["adaswitch"] is ak.AdaSwitch and registry["fixed_switch"] is ak.FixedSwitch
    assert all(cls.name == name for name, cls in registry.items())
