"""A synthetic arithmetic word-problem task in GSM8K format, generated offline.

A problem starts with a quantity and applies `steps` operations; distractor
sentences add numbers that do not matter. The solution has one line per
operation (`12 + 5 = 17`) and ends with `#### <answer>`, as GSM8K does.

The data are a pure function of the arguments: Python's `random.Random` is the
same Mersenne Twister on every machine, and a problem's side (train or
held out) is decided by a hash of its question, so no held-out question is
ever a training question.

The held-out stream is cut into three splits, consecutive blocks of it, so
that they never share a question either: "test" (its first 500 problems,
the test set the shipped presets were trained and stopped against),
"validation" (for every choice made while comparing: learning rates,
AdaSwitch's L and K) and "fresh_test" (scored once, at the end, never used
for a choice).
"""

import hashlib
import random

NAMES = ("Ann", "Ben", "Cal", "Dee", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kim", "Lee")
ITEMS = ("apples", "pens", "cards", "books", "coins", "eggs", "shells", "beads")
ACTIONS = {
    "+": ("{name} gets {n} more.", "{name} finds {n} more.", "{name} buys {n} more."),
    "-": ("{name} gives away {n}.", "{name} loses {n}.", "{name} sells {n}."),
    "*": ("Then {name} has {n} times as many.",),
}
DISTRACTORS = ("{name} is {n} years old.", "{name} walks {n} miles.", "{name} reads {n} pages.")
# The held-out stream's blocks, as [start, end) rows of it.
HELD_OUT = {"test": (0, 500), "validation": (500, 2500), "fresh_test": (2500, 6500)}
SPLITS = ("train", *HELD_OUT)


def split_of(question, test_fraction=0.1):
    """The split a question belongs to, from a hash of its text."""
    digest = int(hashlib.sha256(question.encode()).hexdigest()[:8], 16)
    return "test" if digest < test_fraction * 16**8 else "train"


def problem(rng, steps=2, max_operand=20, operations="+-", distractors=0):
    """One random problem: {"question", "solution", "answer"}."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(1, max_operand)
    sentences = [f"{name} has {value} {item}."]
    lines = []
    for _ in range(steps):
        op = rng.choice([op for op in operations if op != "-" or value > 0])
        n = rng.randint(2, 5) if op == "*" else rng.randint(1, value if op == "-" else max_operand)
        result = {"+": value + n, "-": value - n, "*": value * n}[op]
        sentences.append(rng.choice(ACTIONS[op]).format(name=name, n=n))
        lines.append(f"{value} {op} {n} = {result}")
        value = result
    for _ in range(distractors):
        position = rng.randint(1, len(sentences))
        distractor = rng.choice(DISTRACTORS).format(name=name, n=rng.randint(1, max_operand))
        sentences.insert(position, distractor)
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"#### {value}")
    return {"question": " ".join(sentences), "solution": "\n".join(lines), "answer": str(value)}


def generate(
    split="train", size=None, *, steps=2, max_operand=20, operations="+-", distractors=0, seed=0
):
    """`size` distinct problems of one split: 20,000 train by default, a
    held-out split's whole block (`HELD_OUT`) or its first `size` rows."""
    if split not in SPLITS:
        raise ValueError(f"The arithmetic task has splits {SPLITS}; received {split!r}.")
    if not operations or set(operations) - set(ACTIONS):
        raise ValueError(f"`operations` must be a string over '+-*'; received {operations!r}.")
    if split == "train":
        return _stream("train", size or 20_000, steps, max_operand, operations, distractors, seed)
    start, end = HELD_OUT[split]
    if size is not None and size > end - start:
        raise ValueError(
            f"The arithmetic task's {split!r} split has {end - start} problems; asked for {size}."
        )
    end = start + (size or end - start)
    return _stream("test", end, steps, max_operand, operations, distractors, seed)[start:]


def _stream(side, size, steps, max_operand, operations, distractors, seed):
    """The first `size` distinct problems whose question hashes to `side`."""
    rng = random.Random(f"{seed}/{steps}/{max_operand}/{operations}/{distractors}/{side}")
    rows, seen = [], set()
    for _ in range(20 * size + 1000):
        row = problem(rng, steps, max_operand, operations, distractors)
        if row["question"] not in seen and split_of(row["question"]) == side:
            seen.add(row["question"])
            rows.append(row)
            if len(rows) == size:
                return rows
    raise ValueError(
        f"Only {len(rows)} distinct {side} problems exist with these settings; "
        f"asked for {size}. Use more steps, a larger max_operand or a smaller size."
    )
