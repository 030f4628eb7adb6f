"""Generate with a model on a task and score it: accuracy (GSM family), ROUGE.

metrics = adaswitch_keras.evaluate(student, "arithmetic", limit=200)
metrics = adaswitch_keras.evaluation.score("gsm8k", predictions, rows)
"""

import json
import re
import weakref
from fractions import Fraction

import keras
import keras_hub
import numpy as np
from rouge_score import rouge_scorer

from adaswitch_keras import data

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def parse_number(text):
    """ "1,080" -> 1080, "-4.33" -> 4.33, "13/3" -> Fraction(13, 3); else None."""
    text = text.replace(",", "").strip()
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text):
    """The answer a generation gives: the first number after the last `####`,
    else the last number in the text. "None" after `####` (GSM-Plus's answer
    to unanswerable questions) is returned as the string "None"."""
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail.lower().startswith("none"):
            return "None"
        numbers = _NUMBER.findall(tail)
        return parse_number(numbers[0]) if numbers else None
    numbers = _NUMBER.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def is_correct(prediction, answer):
    """Numeric match; a decimal reference ("4.33") matches to its own
    precision (13/3 counts), an integer one exactly; "None" matches "None"."""
    predicted = extract_answer(prediction)
    if answer == "None" or predicted in (None, "None"):
        return predicted == answer
    reference = parse_number(answer)
    if reference is None:
        raise ValueError(f"Reference answer {answer!r} is not a number or 'None'.")
    decimals = len(answer.split(".")[1]) if "." in answer else 0
    tolerance = Fraction(1, 2 * 10**decimals) if decimals else 0
    return abs(predicted - reference) <= tolerance


def rouge(predictions, references):
    """ROUGE-1/2/L F-measure with `rouge-score`, stemmed, whole strings (no
    sentence splitting), averaged over each example's references, then over
    examples. DialogSum's authors scored with py-rouge, whose default
    `apply_avg` likewise averages over the three test references (the max,
    `apply_best`, is higher)."""
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = {name: [] for name in ROUGE_TYPES}
    for prediction, refs in zip(predictions, references):
        scores = [scorer.score(ref, prediction) for ref in refs]
        for name in ROUGE_TYPES:
            totals[name].append(np.mean([s[name].fmeasure for s in scores]))
    return {name: float(np.mean(values)) for name, values in totals.items()}


def score(task, predictions, examples):
    """Metrics of `predictions` (generated responses) against loader rows."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples.")
    if not examples:
        raise ValueError("No examples to score.")
    if task == "dialogsum":
        return rouge(predictions, [row["references"] for row in examples])
    if task not in data.GSM_FAMILY:
        raise ValueError(f"Unknown task {task!r}; expected one of {data.TASKS}.")
    correct = np.array([is_correct(p, row["answer"]) for p, row in zip(predictions, examples)])
    metrics = {"accuracy": float(correct.mean())}
    if task == "gsm_plus":
        kinds = np.array([row["perturbation_type"] for row in examples])
        for kind in sorted(set(kinds)):
            metrics[f"accuracy/{kind}"] = float(correct[kinds == kind].mean())
    return metrics


_GENERATE_FUNCTIONS = weakref.WeakKeyDictionary()  # model -> {sampler: compiled generate}


def generate(model, prompts, *, batch_size=32, max_length=None, sampler="greedy", verbose=1):
    """The responses `model.generate` writes after each prompt, in batches of
    one fixed shape (the last is padded) so compiled backends trace once."""
    sampler = keras_hub.samplers.get(sampler) if isinstance(sampler, str) else sampler
    # The caller's sampler comes back afterwards; the function compiled for
    # ours is kept for the next call (evaluating during training).
    key = (type(sampler).__name__, repr(sorted(sampler.get_config().items())))
    compiled = _GENERATE_FUNCTIONS.setdefault(model, {})
    callers = getattr(model, "sampler", None), getattr(model, "generate_function", None)
    model.sampler, model.generate_function = sampler, compiled.get(key)
    progress = keras.utils.Progbar(len(prompts), verbose=verbose, unit_name="example")
    responses = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            size = len(batch)
            batch += batch[-1:] * (batch_size - size)
            outputs = model.generate(batch, max_length=max_length)
            shown = _as_generate_shows(model, batch[:size], max_length)
            responses += [_strip_prompt(o, p, q) for o, p, q in zip(outputs[:size], batch, shown)]
            progress.add(size)
    finally:
        compiled[key] = model.generate_function
        model.sampler, model.generate_function = callers
    return responses


def _as_generate_shows(model, prompts, max_length):
    """Each prompt as `generate`'s output begins: tokenized and detokenized
    by the preprocessor, which drops special tokens such as ChatML's turns."""
    preprocessor = model.preprocessor
    packed = preprocessor.generate_preprocess(prompts, sequence_length=max_length)
    return list(preprocessor.generate_postprocess(packed))


def _strip_prompt(output, *prompts):
    output = _text(output)
    for prompt in map(_text, prompts):
        if output.startswith(prompt):
            return output[len(prompt) :]
    return output


def _text(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    return value.decode() if isinstance(value, bytes) else str(value)


def evaluate(
    model,
    task,
    split="test",
    *,
    data_dir=None,
    examples=None,
    limit=None,
    batch_size=32,
    max_length=None,
    sampler="greedy",
    output=None,
    verbose=1,
):
    """Generate with `model` on a task split and score it.

    Returns the task's metrics (`accuracy` with `accuracy/<perturbation>` for
    GSM-Plus; `rouge1`, `rouge2`, `rougeL` for DialogSum) and `predictions`,
    the generated responses. `examples` replaces the loaded rows (e.g. the
    arithmetic task with other knobs); `output` writes one JSON line per
    example with its prompt, prediction and reference fields.
    """
    if examples is None:
        examples = data.load(task, split, data_dir=data_dir)
    examples = list(examples)[:limit]
    predictions = generate(
        model,
        [row["prompts"] for row in examples],
        batch_size=batch_size,
        max_length=max_length,
        sampler=sampler,
        verbose=verbose,
    )
    metrics = score(task, predictions, examples)
    if output:
        with open(output, "w", encoding="utf-8") as f:
            for row, prediction in zip(examples, predictions):
                f.write(json.dumps({**row, "prediction": prediction}) + "\n")
    return {**metrics, "predictions": predictions}
