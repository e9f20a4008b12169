"""Correctness by answer type (r1kit.data.answer_types, answers.judge_answer, grading): for each type,
right answers, right answers written another way, wrong answers, and golds the type cannot read (None).
Rows marked "math-verify: ..." are ones the symbolic checker got wrong when it saw every answer."""

import pytest

from r1kit.data.answer_types import infer_answer_type, list_items, text_key
from r1kit.data.answers import CHECKERS, judge_answer
from r1kit.data.benchmarks import checker_for
from r1kit.data.grading import grade
from r1kit.rewards import accuracy_reward, build_rewards

CASES = {  # checker -> [(pred, gold, expected)]
    "numeric": [
        ("42", "42", True), ("42.0", "42", True), ("1,080", "1080", True), ("$18", "18", True),  # reformatted
        ("x = 7", "7", True), ("3/4", "0.75", True), ("\\frac{1}{2}", "0.5", True), ("025", "25", True),
        ("43", "42", False), ("6*7", "42", False), ("forty-two", "42", False), ("1,000,001", "1000000", False),
        ("42", "forty-two", None), ("42", "\\sqrt{2}", None),  # the gold is no number: does not apply
    ],
    "math": [
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True), ("\\pi/2", "\\frac{\\pi}{2}", True),
        ("(1, 2]", "(1,2]", True), ("5", "5", True), ("\\text{Evelyn}", "Evelyn", True),
        ("Evelyn", "\\text{Evelyn}", True),  # MATH-500's word answers: compared as text
        ("\\frac{1}{3}", "\\frac{1}{2}", False), ("17+11", "28", False),  # arithmetic is not evaluated
        ("silent", "\\text{listen}", False),  # math-verify: the same product of six symbols
        ("evelyn", "\\text{Evelyn}", False),
        ("5", "", None),
    ],
    "multiple_choice": [
        ("B", "B", True), ("(b)", "B", True), ("B) 42", "B", True), ("The answer is (B).", "B", True),
        ("C", "B", False), ("42", "B", False),
        ("B", "forty-two", None),  # a gold that names no option
    ],
    "text": [
        ("Paris", "Paris", True), ("  Paris. ", "Paris", True), ('"New  York"', "New York", True),
        ("\\text{Paris}", "Paris", True),
        ("paris", "Paris", False),  # math-verify: equal after its normalisation
        ("silent", "listen", False),  # math-verify: s*i*l*e*n*t == l*i*s*t*e*n
        ("Pariss", "Paris", False),
        ("Paris", "   ", None),
    ],
    "ordered_list": [
        ("apple, banana, cherry", "apple, banana, cherry", True),
        ("apple,banana,cherry", "apple, banana, cherry", True),  # math-verify: 0 without the spaces
        ("[apple; banana; cherry]", "apple, banana, cherry", True), ("1, 2.0, 3", "1, 2, 3", True),
        ("cherry, banana, apple", "apple, banana, cherry", False),  # math-verify: a reordered set is equal
        ("Apple, banana, cherry", "apple, banana, cherry", False),
        ("apple, banana", "apple, banana, cherry", False),
        ("apple", ", ,", None),
    ],
    "unordered_set": [
        ("b, a, c", "a, b, c", True), ("{c; a; b}", "a, b, c", True), ("3,1,2", "1, 2, 3", True),
        ("a, b", "a, b, c", False), ("a, a, b, c", "a, b, c", False), ("a, b, d", "a, b, c", False),
        ("a", "[]", None),
    ],
    "boolean": [
        ("True", "true", True), ("yes", "True", True), ("NO", "false", True), ("'False'.", "no", True),
        ("false", "true", False), ("maybe", "yes", False), ("1", "true", False),
        ("true", "maybe", None), ("true", "1", None),
    ],
}


@pytest.mark.parametrize("checker, pred, gold, expected",
                         [(c, p, g, e) for c, rows in CASES.items() for p, g, e in rows])
def test_each_type_has_its_checker(checker, pred, gold, expected):
    assert judge_answer(pred, gold, checker) is expected


def test_every_checker_is_tested_with_right_reformatted_wrong_and_inapplicable_answers():
    assert set(CASES) | {"auto"} == set(CHECKERS)
    for checker, rows in CASES.items():
        verdicts = [e for _, _, e in rows]
        assert verdicts.count(True) >= 2 and False in verdicts and None in verdicts, checker


@pytest.mark.parametrize("gold, answer_type", [
    ("42", "numeric"), ("-3/4", "numeric"), ("1,080", "numeric"),
    ("Yes", "boolean"), ("false", "boolean"),
    ("listen, silent", "ordered_list"), ("threats, didn, 1100", "ordered_list"), ("_cordons, Forum", "ordered_list"),
    ("New York", "text"), ("don't", "text"), ("Paris", "text"),
    ("\\frac{\\pi}{2}", "math"), ("x^2+1", "math"), ("1, 2, 3", "math"), ("(1,2]", "math"), ("x", "math"),
    ("a, b", "math"), ("x^2, y", "math"),
])
def test_auto_infers_the_type_from_the_gold(gold, answer_type):
    assert infer_answer_type(gold) == answer_type


@pytest.mark.parametrize("pred, gold, expected", [
    ("silent", "listen", False), ("Listen", "listen", False), ("listen", "listen", True),  # words: text
    ("b, a", "a, b", True),  # single letters are variables: math-verify's set
    ("silent, listen", "listen, silent", False), ("listen,silent", "listen, silent", True),  # word lists: ordered
    ("28", "28", True), ("17+11", "28", False), ("yes", "Yes", True),
    (None, "28", False), ("28", None, None),  # nothing extracted: wrong; no gold: does not apply
])
def test_auto_never_sends_words_through_math_verify(pred, gold, expected):
    assert judge_answer(pred, gold, "auto") is expected


def test_list_items_and_text_key():
    assert list_items("[a, b; c,]") == ["a", "b", "c"] and list_items("(40)") == ["(40)"]
    assert text_key(' "\\text{New   York}." ') == "New York"


def test_accuracy_reward_is_none_where_the_gold_does_not_apply():
    """As TRL's accuracy_reward: a gold the checker cannot read is None (does not apply), not 0."""
    completions = ["<answer>42</answer>", "<answer>42</answer>", "no answer", "<answer>42</answer>"]
    golds = ["42", "forty-two", "42", None]
    assert accuracy_reward(completions, answer=golds, checker="numeric") == [1.0, None, 0.0, None]


def test_a_row_may_name_its_answer_type():
    """A file can carry an answer_type column; it counts under the auto checker, not over a source's own."""
    completions = ["<answer>c, b, a</answer>"] * 2
    columns = {"answer": ["a, b, c"] * 2, "answer_type": ["unordered_set", "ordered_list"]}
    assert accuracy_reward(completions, **columns) == [1.0, 0.0]
    assert accuracy_reward(completions, **columns, checker="text") == [0.0, 0.0]
    with pytest.raises(ValueError, match="row answer_type 'sett' is not a checker; expected one of"):
        grade("a", {"answer": "a", "answer_type": "sett"})


def test_training_grades_with_the_sources_checker():
    """run._build_rewards gives accuracy and length the data source's checker, as evaluation uses it."""
    from r1kit.recipe import load_recipe
    from r1kit.run import _build_rewards

    def checker_of(overrides):
        (_, fn, _), = _build_rewards(load_recipe(None, overrides))
        return fn.keywords.get("checker")

    assert checker_of(["data.source=gsm8k"]) == "numeric" == checker_for("gsm8k", "auto")
    assert checker_of(["data.source=math500"]) == "math"
    assert checker_of(["data.source=math500", "rewards=[{name: accuracy, checker: text}]"]) == "text"  # set wins
    assert checker_of([]) == "auto"  # tiny_arith: the gold's form (numbers)


@pytest.mark.parametrize("spec, message", [
    ({"name": "repetition", "max_penalty": 0.5}, "reward 'repetition': needs max_penalty <= 0"),
    ({"name": "repetition", "ngram_size": 0}, "reward 'repetition': needs an integer ngram_size >= 1"),
    ({"name": "soft_overlong", "overlong_buffer": 0}, "reward 'soft_overlong': needs integers with 0 < overlong_buffer"),
    ({"name": "soft_overlong", "overlong_buffer": 80, "max_completion_length": 64}, "overlong_buffer=80"),
    ({"name": "length", "max_len": 0}, "reward 'length': needs an integer max_len >= 1, got max_len=0"),
    ({"name": "length", "min_value_correct": 2.0}, "needs min_value_correct <= max_value_correct, got 2.0 > 1.0"),
    ({"name": "length", "max_value_wrong": "high"}, "reward 'length': "),  # a value of the wrong kind
])
def test_builtin_parameters_out_of_range_fail_at_load(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_rewards([spec])


def test_out_of_range_parameter_fails_before_the_model_loads(tmp_path, capsys):
    from r1kit.cli import main

    assert main(["train", "rewards=[{name: repetition, max_penalty: 0.5}]", f"output_dir={tmp_path}",
                 "model.name_or_path=./no-such-model"]) == 2
    assert "reward 'repetition': needs max_penalty <= 0 (it is a penalty), got max_penalty=0.5" in capsys.readouterr().err
