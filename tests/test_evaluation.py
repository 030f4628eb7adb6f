"""Scoring (answer extraction, ROUGE), batched generation, the eval callback."""

import json
import os
from fractions import Fraction

import keras
import keras_hub
import numpy as np
import pytest

import adaswitch_keras as ak
from adaswitch_keras import evaluation
from conftest import MAX_NEW_TOKENS
from test_data import SHARED
from test_data import needs_shared


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5 + 4 = 9\n#### 9", Fraction(9)),
        ("She has 1,080 left.\n#### 1,080", Fraction(1080)),
        ("#### -12", Fraction(-12)),
        ("so 13/3 each\n#### 13/3", Fraction(13, 3)),
        ("#### 4.33 dollars", Fraction("4.33")),
        ("no marker: first 3 then 7.5", Fraction("7.5")),
        ("The question lacks data.\n#### None", "None"),
        ("#### 7\nlater text 99\n#### 8", Fraction(8)),
        ("no number at all", None),
    ],
)
def test_extract_answer(text, expected):
    assert evaluation.extract_answer(text) == expected


@needs_shared
def test_gsm8k_reference_solutions_score_100_percent():
    rows = ak.data.load("gsm8k", "test", data_dir=os.path.join(SHARED, "gsm8k"))
    assert evaluation.score("gsm8k", [r["responses"] for r in rows], rows) == {"accuracy": 1.0}
    wrong = [r["responses"].rsplit("####", 1)[0] + f"#### {float(r['answer']) + 1:g}" for r in rows]
    assert evaluation.score("gsm8k", wrong, rows) == {"accuracy": 0.0}


def test_gsm_plus_style_answers():
    examples = [
        {"answer": "4.33", "perturbation_type": "digit expansion"},
        {"answer": "4.33", "perturbation_type": "digit expansion"},
        {"answer": "-1080", "perturbation_type": "numerical substitution"},
        {"answer": "3/4", "perturbation_type": "numerical substitution"},
        {"answer": "None", "perturbation_type": "critical thinking"},
        {"answer": "None", "perturbation_type": "critical thinking"},
    ]
    predictions = [
        "#### 13/3",  # 4.333.. matches 4.33 to its two decimals
        "#### 4.3",  # too coarse
        "a loss of 1,080\n#### -1,080",
        "#### 0.75",
        "It cannot be answered.\n#### None",
        "#### 0",
    ]
    assert evaluation.score("gsm_plus", predictions, examples) == {
        "accuracy": 4 / 6,
        "accuracy/critical thinking": 0.5,
        "accuracy/digit expansion": 0.5,
        "accuracy/numerical substitution": 1.0,
    }


def test_integer_answers_need_an_exact_match():
    examples = [{"answer": "18"}] * 3
    assert evaluation.score("gsm8k", ["#### 18.0", "#### 18.4", "#### 17"], examples) == {
        "accuracy": 1 / 3
    }


def test_rouge_against_hand_checked_values():
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 of 6 tokens each.
    scores = evaluation.rouge(["the cat is on the mat"], [["the cat sat on the mat"]])
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)  # the cat, on the, the mat of 5 bigrams
    # Mean over references: F(LCS 2 of "a b" vs "a b c d") = 2/3, and 0 against "x y".
    scores = evaluation.rouge(["a b"], [["a b c d", "x y"]])
    assert scores["rougeL"] == pytest.approx((2 / 3 + 0) / 2)
    assert evaluation.score("dialogsum", ["a b"], [{"references": ["a b c d", "x y"]}])[
        "rougeL"
    ] == pytest.approx(1 / 3)


def test_score_rejects_mismatched_input():
    with pytest.raises(ValueError, match="2 predictions for 1 examples"):
        evaluation.score("gsm8k", ["1", "2"], [{"answer": "1"}])
    with pytest.raises(ValueError, match="Unknown task"):
        evaluation.score("mnist", ["1"], [{"answer": "1"}])


@pytest.fixture(scope="module")
def arithmetic_rows():
    rows = ak.data.load("arithmetic", "test", limit=6, steps=1, max_operand=9)
    return [{**r, "prompts": r["question"][:12]} for r in rows]  # fit the tiny model


def test_evaluate_generates_in_fixed_batches(pair, arithmetic_rows, tmp_path):
    _, student = pair
    output = tmp_path / "predictions.jsonl"
    result = ak.evaluate(
        student, "arithmetic", examples=arithmetic_rows, batch_size=4, verbose=0, output=output
    )
    assert len(result["predictions"]) == 6 and 0 <= result["accuracy"] <= 1
    # The padded last batch changes nothing: greedy, one batch of 8 gives the same.
    again = ak.evaluate(student, "arithmetic", examples=arithmetic_rows, batch_size=8, verbose=0)
    assert again["predictions"] == result["predictions"]
    alone = ak.evaluation.generate(
        student, [arithmetic_rows[5]["prompts"]], batch_size=1, verbose=0
    )
    assert alone == result["predictions"][5:]
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["prediction"] for line in lines] == result["predictions"]
    assert lines[0]["answer"] == arithmetic_rows[0]["answer"]


def test_evaluate_leaves_the_callers_sampler_as_it_was(pair, arithmetic_rows):
    _, student = pair
    student.compile(sampler=keras_hub.samplers.TopKSampler(k=3))
    sampler = student.sampler
    ak.evaluate(student, "arithmetic", examples=arithmetic_rows[:2], batch_size=2, verbose=0)
    assert student.sampler is sampler


def test_evaluation_callback_logs_every_n_steps(pair, arithmetic_rows):
    teacher, student = pair
    distiller = ak.Distiller(
        teacher, student, strategy="supervised_kd", max_new_tokens=MAX_NEW_TOKENS
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3))
    train = [{"prompts": r["prompts"], "responses": r["answer"]} for r in arithmetic_rows] * 2
    callback = ak.callbacks.TaskEvaluation(
        "arithmetic", arithmetic_rows[:4], every_n_steps=2, batch_size=4
    )
    history = distiller.fit(train, batch_size=4, epochs=2, verbose=0, callbacks=[callback])
    assert [h["step"] for h in callback.history] == [2, 3, 4, 6]  # 3 steps per epoch
    assert len(history.history["eval_accuracy"]) == 2
    assert history.history["eval_accuracy"][-1] == callback.history[-1]["eval_accuracy"]


def test_responses_lose_prompts_whose_special_tokens_generate_drops(pair):
    """ChatML prompts: KerasHub's generate output leaves the turn tokens out,
    so the prompt's own numbers must not reach the answer extraction."""
    _, student = pair
    end = student.preprocessor.tokenizer.end_token
    prompts = [f"{end}Q: 12 + 30 ={end}", "Q: 7 - 7 ="]
    responses = evaluation.generate(student, prompts, batch_size=2, max_length=24, verbose=0)
    student.compile(sampler="greedy")  # as evaluation.generate samples
    outputs = [str(o) for o in student.generate(prompts, max_length=24)]
    assert not outputs[0].startswith(prompts[0])  # the special tokens are gone
    for response, output in zip(responses, outputs):
        assert output.endswith(response) and "12 + 30" not in response and "7 - 7" not in response


@needs_shared
def test_dialogsum_score_equals_rouge_score_called_directly():
    """On real DialogSum test rows (three references each): our score is
    rouge-score's F-measure, stemmed, averaged over references then rows."""
    from rouge_score import rouge_scorer

    rows = ak.data.load("dialogsum", "test", data_dir=os.path.join(SHARED, "dialogsum"))[:25]
    predictions = [row["dialogue"].split("\n")[0].split(": ", 1)[-1] for row in rows]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    want = {
        name: np.mean(
            [
                np.mean([scorer.score(ref, p)[name].fmeasure for ref in row["references"]])
                for p, row in zip(predictions, rows)
            ]
        )
        for name in ("rouge1", "rouge2", "rougeL")
    }
    assert all(len(row["references"]) == 3 for row in rows)
    got = ak.evaluation.score("dialogsum", predictions, rows)
    assert got == pytest.approx(want, abs=1e-12) and 0 < got["rougeL"] < 1
