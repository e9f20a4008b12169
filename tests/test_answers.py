"""Table tests for r1kit.data.answers: each row is (input, expected)."""

import subprocess
import sys
from pathlib import Path

import pytest

from r1kit.data.answers import (
    CHECKERS,
    EXTRACT_MODES,
    answers_match,
    check_answer,
    extract_answer,
    extract_boxed,
    extract_hash_answer,
    extract_last_number,
    extract_tag,
    numbers_match,
    parse_exact,
    parse_number,
)

REPO = Path(__file__).resolve().parents[1]  # so subprocesses import this checkout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),
        ("#### 1,080", "1080"),
        ("#### -5 ", "-5"),
        ("####7", "7"),  # no space after the hashes
        ("#### 3\nwait, no\n#### 4", "4"),  # last marker wins
        ("#### 12\nThat is all.", "12"),  # only the rest of the marker's line
        ("no marker here 42", None),
        ("#### ", None),  # empty value
        ("", None),
    ],
)
def test_extract_hash_answer(text, expected):
    assert extract_hash_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{42}", "42"),
        (r"\boxed{1} then \boxed{2}", "2"),  # last box wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\frac{\sqrt{3}}{2}}.", r"\frac{\sqrt{3}}{2}"),
        (r"\fbox{7}", "7"),
        (r"\boxed { 5 }", "5"),  # spaces around
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are literal, not grouping
        (r"\boxed{\boxed{3}}", r"\boxed{3}"),  # inner box belongs to the outer one
        (r"\boxed{1} and \boxed{\frac{1}{2}", None),  # last box never closed: truncated
        (r"\boxed{}", ""),
        ("no box", None),
        (r"\boxed{π/2}", "π/2"),  # unicode content
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, tag, expected",
    [
        ("<answer>26</answer>", "answer", "26"),
        ("<answer>\n  26 \n</answer>", "answer", "26"),
        ("<answer>1</answer> hmm <answer>2</answer>", "answer", "2"),  # last pair wins
        ("<answer>1<answer>2</answer>", "answer", "2"),  # nested/repeated opening
        ("<answer>1</answer><answer>2", "answer", "1"),  # last one unclosed: last complete pair
        ("</answer>5<answer>", "answer", None),  # wrong order
        ("<answer>5", "answer", None),  # truncated
        ("<think>a</think>", "think", "a"),
        ("<answer></answer>", "answer", ""),
        ("<answer>日本語 ✓</answer>", "answer", "日本語 ✓"),  # unicode
        ("<ANSWER>5</ANSWER>", "answer", None),  # tags are case-sensitive
        ("", "answer", None),
    ],
)
def test_extract_tag(text, tag, expected):
    assert extract_tag(text, tag) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("the answer is 42", "42"),
        ("x = -3", "-3"),
        ("3-5", "5"),  # binary minus is not a sign
        ("it costs 1,080 dollars", "1080"),
        ("about 2.5 hours.", "2.5"),
        ("half is 1/2", "1/2"),
        ("first 1, 2, 3", "3"),  # a list, not thousands
        ("12 then 7", "7"),
        ("no digits", None),
        ("", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize(
    "s, expected",
    [
        ("42", 42.0),
        ("  42 ", 42.0),
        ("-2", -2.0),
        ("+3", 3.0),
        ("1,080", 1080.0),
        ("1,234,567.5", 1234567.5),
        ("1{,}080", 1080.0),  # LaTeX thousands separator
        ("025", 25.0),  # leading zeros
        ("$18.00", 18.0),
        (r"\$18", 18.0),
        ("50%", 50.0),
        ("42.", 42.0),  # sentence-final period
        (".5", 0.5),
        ("3/4", 0.75),
        ("-3/4", -0.75),
        (r"\frac{3}{4}", 0.75),
        (r"\dfrac{3}{4}", 0.75),
        (r"-\frac{1}{2}", -0.5),
        (r"\frac{-1}{2}", -0.5),
        ("1/0", None),  # no division by zero
        ("1,08", None),  # comma not in thousands groups
        ("0,5", None),  # decimal comma is ambiguous
        ("5 apples", None),  # units
        ("x+1", None),
        (r"\frac{\pi}{2}", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_number(s, expected):
    assert parse_number(s) == expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("1,080", "1080", True),
        ("025", "25", True),
        ("0.5", "1/2", True),
        (r"\frac{1}{2}", "0.5", True),
        ("$5", "5.00", True),
        ("0.3333333333", "1/3", True),
        ("0.333", "1/3", False),  # outside rel_tol
        ("0", "0.0", True),
        ("1e-9", "0", False),  # not a plain number
        ("7", "8", False),
        ("seven", "7", False),
    ],
)
def test_numbers_match(pred, gold, expected):
    assert numbers_match(pred, gold) is expected


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("1,080", "1080", True),
        ("025", "25", True),
        (extract_boxed(r"\boxed{\frac{1}{2}}"), "0.5", True),
        (r"\frac{\pi}{2}", r"\pi/2", True),  # math-verify
        (r"\dfrac{\pi}{2}", r"\frac{\pi}{2}", True),
        (r"$\frac{\pi}{2}$", r"\frac{\pi}{2}", True),  # already delimited
        (r"\sqrt{4}", "2", True),
        ("x + 1", "1+x", True),
        ("B", "B", True),  # exact string
        ("New  York", "New York", True),  # whitespace normalised
        ("7", "8", False),
        ("0.33", "1/3", False),  # both plain numbers: decided numerically, no math-verify call
        (r"\frac{\pi}{3}", r"\frac{\pi}{2}", False),
        ("", "5", False),
        ("5", "", False),
        (None, "5", False),
        (r"\frac{1}{", "1", False),  # malformed LaTeX never raises
        ("<answer>26</answer>", "26", False),  # callers extract the tag first
        ("日本", "5", False),
    ],
)
def test_answers_match(pred, gold, expected):
    assert answers_match(pred, gold) is expected


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("<think>t</think><answer>7</answer>", "tag", "7"),
        ("<answer>\\boxed{7}</answer>", "tag", "7"),  # a box inside the tag is unwrapped
        ("<think>so 18</think> 18", "tag", None),  # answer only in reasoning
        (r"\boxed{3}", "tag", None),
        (r"<answer>5</answer> \boxed{3}", "auto", "5"),  # tag beats box
        (r"\boxed{3} #### 4", "auto", "3"),  # box beats hash
        ("#### 4", "auto", "4"),
        ("the answer is 9", "auto", None),  # auto never guesses the last number
        ("the answer is 9", "auto_last_number", "9"),
        ("<answer>5</answer> 9", "last_number", "9"),
        (r"<answer>5</answer> \boxed{3}", "boxed", "3"),
        ("#### 1,000 and <answer>2</answer>", "hash", "1000 and <answer>2</answer>"),
        ("", "auto", None),
    ],
)
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extract_answer_unknown_mode_lists_modes():
    with pytest.raises(ValueError, match="bogus") as info:
        extract_answer("x", "bogus")
    for mode in EXTRACT_MODES:
        assert mode in str(info.value)


def test_import_is_light():
    """Importing the module pulls in neither torch nor math-verify's sympy."""
    code = "import sys, r1kit.data.answers; print('torch' in sys.modules, 'sympy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False"]


def test_answers_match_in_worker_thread():
    """math-verify's signal-based timeout fails off the main thread; we must still compare."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(answers_match, r"\frac{\pi}{2}", r"\pi/2").result() is True


@pytest.mark.parametrize(
    "pred, gold, checker, expected",
    [
        ("1000001", "1000000", "auto", False),  # exact: no relative tolerance on integers
        ("1,000,001", "1000000", "numeric", False),
        ("1000000.0", "1,000,000", "numeric", True),  # same value, other spelling
        ("123456.79", "123456.78", "math", False),  # exact decimals compare exactly
        ("0.1", "1/10", "auto", True),  # a terminating fraction is its decimal
        ("0.3333333", "1/3", "auto", True),  # the one tolerance: no decimal equals 1/3
        ("17+11+15+5-8", "40", "auto", False),  # the checker does not do the policy's arithmetic
        ("17+11+15+5-8", "40", "math", False),  # ... under math either, for a numeric gold
        ("17+11+15+5-8", "40", "numeric", False),
        (r"\sqrt{1600}", "40", "math", False),  # nor its square roots
        ("2*20", "40", "auto", False),
        (r"\frac{80}{2}", "40", "auto", True),  # a fraction is a number
        ("x = 40", "40", "auto", True),  # variable = value
        ("x = 40", "40", "numeric", True),  # numeric too: the value is stated, not computed
        ("x = 17+23", "40", "numeric", False),
        ("43 = 42", "42", "auto", False),  # not an assignment: math-verify would read 42
        ("43 = 42", r"\frac{1}{2}", "math", False),
        ("x = 5", "x=5", "math", True),  # an equation gold keeps its equation
        ("\u22125", "-5", "numeric", True),  # unicode minus is a minus
        ("\u22121/2", "-0.5", "auto", True),
        (r"\frac{\sqrt{12}}{4}", r"\frac{\sqrt{3}}{2}", "math", True),  # symbolic gold: equivalent forms count
        (r"\left(\frac{\sqrt{3}}{2}\right)+1", r"\frac{\sqrt{3}}{2}", "math", False),
        ("9" * 5000, "9", "auto", False),  # a 5,000-digit "number" is refused, not a crash
    ],
)
def test_check_answer(pred, gold, checker, expected):
    assert check_answer(pred, gold, checker) is expected


@pytest.mark.parametrize(
    "text, mode, expected",
    [
        ("<answer>1</answer> wait <answer>2", "auto", None),  # last answer cut off: the earlier one is not credited
        ("<answer>1</answer> wait <answer>2", "tag", None),
        (r"\boxed{1} then <answer>2", "auto", None),  # nor a box before the cut-off answer
        ("<answer>1</answer><answer>2", "boxed", None),  # the box mode never looks at tags
        ("<answer>1</answer> done", "auto", "1"),
        ("the result is \u22127", "last_number", "-7"),  # unicode minus
    ],
)
def test_extract_answer_cut_off_and_minus(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_policy_cannot_hand_arithmetic_to_the_checker():
    """Every numeric gold of the shipped benchmarks and the tiny world: the gold scores, an
    unevaluated expression of the same value never does, under every checker of numbers."""
    from r1kit.config import DataCfg
    from r1kit.data.sources import load_rows

    golds = [r["answer"] for r in load_rows(DataCfg(), "heldout", size=200)]
    for name in ("gsm8k", "math500", "aime24", "aime25", "amc23"):
        golds += [r["answer"] for r in load_rows(DataCfg(source=name), "test")]
    numeric = [g for g in golds if parse_exact(g) is not None]
    assert len(numeric) > 1500
    for gold in numeric:
        value = parse_exact(gold)
        for hack in (f"{value - 1}+1", f"{value + 3}-3", f"2*{value}/2", f"({value})"):
            # letters: tests/test_choices.py; booleans: a number is not one (None, tests/test_answer_types.py)
            for checker in (c for c in CHECKERS if c not in ("multiple_choice", "boolean")):
                assert check_answer(gold, gold, checker), gold
                assert not check_answer(hack, gold, checker), (hack, gold, checker)


@pytest.mark.parametrize(
    "pred",
    [
        r"2^{2^{2^{2^{10}}}}",  # an exponent tower: refused before math-verify
        r"\frac{1}{" * 200,  # deep nesting
        r"\sqrt{" * 100 + "2" + "}" * 100,
        "x" * 3000 + "+1",  # too long
        r"\int_0^1 x^{1000000} dx",  # slow in sympy: the deadline stops it
        r"99999999^{99999999}",
    ],
)
def test_pathological_latex_is_bounded(pred):
    """Up to 3 x 5 s of sympy per answer before (no timeout at all off the main thread); now about 1 s at most."""
    import time

    start = time.perf_counter()
    assert check_answer(pred, r"\frac{\sqrt{3}}{2}", "math") is False
    assert time.perf_counter() - start < 3.0  # a 1 s deadline; signals wait for a long C call to return


def test_math_verify_never_logs_whole_inputs(caplog):
    """math-verify quotes whole inputs in its warnings; r1kit cuts them short."""
    import logging

    from r1kit.data.latex import LOG_CHARS, latex_equal

    latex_equal("1", "2")  # installs the filter
    with caplog.at_level(logging.WARNING):
        logging.getLogger("math_verify.metric").warning("Gold: %s", "y" * 10_000)
    assert caplog.records and all(len(r.getMessage()) < LOG_CHARS + 40 for r in caplog.records)


def _right_forms(gold: str) -> list[str]:
    """Ways a correct answer to a numeric gold is written; each must score."""
    v = parse_exact(gold)
    forms = [gold, f" {gold} ", f"${gold}", f"{gold}.", f"x = {gold}", f"\\boxed{{{gold}}}"]
    if v.denominator == 1:
        n = int(v)
        forms += [f"{n}.0", f"{n}.00", f"{n:,}", f"{n:,}".replace(",", "{,}"), f"\\frac{{{2 * n}}}{{2}}"]
        forms += [f"0{n}"] if n >= 0 else [f"\u2212{-n}", f"-{-n}"]
    else:
        forms += [f"{v.numerator}/{v.denominator}", f"\\frac{{{v.numerator}}}{{{v.denominator}}}".replace(
            "\\frac{-", "-\\frac{")]
    return forms


def _wrong_forms(gold: str) -> list[str]:
    """Wrong answers and hacks near a numeric gold; none may score."""
    v = parse_exact(gold)
    wrong = [str(v + 1), str(v - 1), str(v * 10), f"{float(v) + 0.01:.2f}", f"{v - 1}+1", f"{v + 2}-2", f"2*{v}/2",
             f"{v + 1} = {gold}", f"{gold} + 0", f"{gold}, {v + 1}", f"{gold}{gold}"]
    return [w for w in wrong if parse_exact(w) != v]


def test_every_shipped_gold_in_many_surface_forms():
    """~40k checks through the accuracy reward: right forms of every gold score, wrong ones and hacks never do,
    and a completion cut off after a right answer inside a new <answer> scores 0."""
    from r1kit.config import DataCfg
    from r1kit.data.benchmarks import BENCHMARKS
    from r1kit.data.sources import load_rows
    from r1kit.rewards import accuracy_reward

    sets = [("tiny_arith", "heldout", "auto")] + [(n, "test", BENCHMARKS[n].checker) for n in BENCHMARKS]
    checks, disagreements = 0, []
    for source, split, checker in sets:
        for row in load_rows(DataCfg(source=source), split, size=500 if source == "tiny_arith" else None):
            gold = row["answer"]
            if parse_exact(gold) is None:  # a symbolic MATH gold: itself, boxed, and perturbed
                lhs, eq, rhs = gold.rpartition("=")  # an equation: its right-hand side plus one
                cases = [(gold, 1.0), (f"\\boxed{{{gold}}}", 1.0), (f"{lhs}{eq}\\left({rhs}\\right)+1", 0.0)]
            else:
                cases = [(f, 1.0) for f in _right_forms(gold)] + [(f, 0.0) for f in _wrong_forms(gold)]
            texts = [f"<think>work</think><answer>{form}</answer>" for form, _ in cases]
            texts.append(f"<think>w</think><answer>{gold}</answer> wait, <answer>{gold}")  # cut off: 0
            expected = [e for _, e in cases] + [0.0]
            got = accuracy_reward(texts, answer=[gold] * len(texts), checker=checker)
            checks += len(texts)
            disagreements += [(source, gold, t, e) for t, e, g in zip(texts, expected, got) if e != g]
    from collections import Counter

    kinds = Counter((source, t.split("<answer>")[1][: 12], e) for source, _, t, e in disagreements)
    assert not disagreements, (len(disagreements), kinds.most_common(20), disagreements[:5])
    assert checks > 30_000
    print(f"{checks} answer checks, {len(disagreements)} disagreements")
