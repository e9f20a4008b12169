"""reasoning-gym tasks as a data source (optional extra: skipped only when reasoning-gym is not installed)."""

import pytest

from r1kit.config import DataCfg
from r1kit.recipe import load_recipe
from r1kit.data.sources import DataError, load_rows
from r1kit.rewards import get_reward


def test_missing_extra_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    with pytest.raises(DataError, match=r"needs the reasoning-gym package: pip install 'r1kit\[reasoning-gym\]'"):
        load_rows(DataCfg(source="reasoning_gym:chain_sum"), "train", size=2)


def test_task_config_only_with_reasoning_gym():
    from r1kit.config import ConfigError

    with pytest.raises(ConfigError, match="data.task_config is only used by reasoning_gym"):
        load_recipe(None, ["data.task_config={min_terms: 2}"])


@pytest.fixture()
def gym():
    return pytest.importorskip("reasoning_gym")  # CI installs the extra (.ci/run), so this runs there


def test_chain_sum_rows_splits_and_config(gym):
    cfg = load_recipe(None, ["data.source=reasoning_gym:chain_sum", "data.task_config={min_terms: 2, max_terms: 2}"]).data
    train = load_rows(cfg, "train", size=50)
    heldout = load_rows(cfg, "heldout", size=20)
    assert len(train) == 50 and len(heldout) == 20 and load_rows(cfg, "train", size=50) == train  # seeded
    assert not {r["question"] for r in train} & {r["question"] for r in heldout}
    for row in train + heldout:  # two terms each, and the answer is their value
        expression = row["metadata"]["expression"]
        assert row["metadata"]["num_terms"] == 2 and int(row["answer"]) == eval(expression)  # noqa: S307


def test_reasoning_gym_reward_uses_the_task_scorer(gym):
    cfg = DataCfg(source="reasoning_gym:chain_sum")
    rows = load_rows(cfg, "heldout", size=3)
    columns = {k: [r[k] for r in rows] for k in ("question", "answer", "metadata")}
    good = [f"<think>x</think><answer>{r['answer']}</answer>" for r in rows]
    wrong = [f"<answer>{int(r['answer']) + 1}</answer>" for r in rows]
    reward = get_reward("reasoning_gym")
    assert reward(good, **columns) == [1.0] * 3
    assert reward(wrong, **columns) == [0.0] * 3
    assert reward(["no tags"] * 3, **columns) == [0.0] * 3
    assert reward(good, **{**columns, "metadata": [None] * 3}) == [None] * 3
    assert get_reward("accuracy")(good, answer=columns["answer"]) == [1.0] * 3


@pytest.mark.parametrize("source, config, match", [
    ("reasoning_gym:no_such_task", {}, "'no_such_task' not registered"),
    ("reasoning_gym:chain_sum", {"bogus": 3}, "data.task_config {'bogus': 3} for reasoning_gym:chain_sum"),
])
def test_bad_task_or_config(source, config, match, gym):
    with pytest.raises(DataError, match=match):
        load_rows(DataCfg(source=source, task_config=config), "train", size=2)
