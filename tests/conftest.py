import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import adaswitch_keras as ak  # noqa: E402

SEQUENCE_LENGTH = 32
MAX_NEW_TOKENS = 12

# Modules whose subject does not depend on the backend (the command line, the
# data files, the documentation's examples) run in one backend's run of the
# suite only; tests/run.sh runs the suite once per backend.
ONCE_BACKEND = "tensorflow"
once = pytest.mark.skipif(
    keras.config.backend() != ONCE_BACKEND,
    reason=f"does not depend on the backend: runs in the {ONCE_BACKEND} run only",
)


def arithmetic_pairs(n=16):
    return [{"prompts": f"Q: {i} + {i % 5} =", "responses": f" {i + i % 5}"} for i in range(n)]


def sharpen(model, factor):
    """Scale the (tied) embeddings so that a random model's next-token
    distributions are confident and context dependent, like a trained one's."""
    embedding = model.backbone.token_embedding.embeddings
    embedding.assign(embedding * factor)
    return model


@pytest.fixture(scope="session")
def pair():
    """A tiny Qwen2 teacher (2 layers, 64 wide) and student (1 layer, 32)."""
    keras.utils.set_random_seed(0)
    teacher = ak.tiny.causal_lm(num_layers=2, hidden_dim=64, sequence_length=SEQUENCE_LENGTH)
    student = ak.tiny.causal_lm(num_layers=1, hidden_dim=32, sequence_length=SEQUENCE_LENGTH)
    return sharpen(teacher, 60.0), sharpen(student, 20.0)


@pytest.fixture(scope="session")
def packed_pairs(pair):
    """`arithmetic_pairs(16)` packed once (tokenizing in tf.data takes seconds)."""
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS)
    data = distiller.make_dataset(arithmetic_pairs(16), batch_size=16)
    return {k: np.asarray(v) for k, v in next(iter(data)).items()}


@pytest.fixture(scope="session")
def batch(pair):
    """One packed batch of 6 prompts of different lengths."""
    teacher, student = pair
    distiller = ak.Distiller(teacher, student, max_new_tokens=MAX_NEW_TOKENS)
    rows = [
        {"prompts": "Q: 1 + 2 =", "responses": " 3"},
        {"prompts": "Q: 12 + 30 - 4 =", "responses": " 38"},
        {"prompts": "Hi", "responses": " there"},
        {"prompts": "the quick brown", "responses": " fox"},
        {"prompts": "a", "responses": " b"},
        {"prompts": "Q: 7 - 7 =", "responses": " 0"},
    ]
    data = distiller.make_dataset(rows, batch_size=len(rows))
    return {k: np.asarray(v) for k, v in next(iter(data)).items()}


# Arguments under which every rule fires on the tiny pair: on some tokens, not all.
STRATEGY_ARGUMENTS = {
    "window": 2,
    "k": 1.2,
    "top_k": 60,
    "tau0": 0.3,
    "decay": 0.05,
    "lmbda": 0.5,
    "position": 2,
}


def make_strategy(name, arguments=STRATEGY_ARGUMENTS):
    """The registered strategy `name`, with those of `arguments` it takes."""
    accepted = ak.strategies.options(name)
    return ak.strategies.get(name, **{k: v for k, v in arguments.items() if k in accepted})


def every_strategy(arguments=STRATEGY_ARGUMENTS):
    """Every registered strategy (a strategy added later is tested too)."""
    return [make_strategy(name, arguments) for name in ak.strategies.registered()]


def copy_weights(model):
    return [np.array(w) for w in model.get_weights()]
