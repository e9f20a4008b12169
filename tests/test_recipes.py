"""The tiny GRPO recipe is exactly the built-in default, so `r1kit train` and the recipe agree."""

from pathlib import Path

import pytest

from r1kit.recipe import load_recipe

RECIPES = Path(__file__).parent.parent / "recipes"


def test_tiny_grpo_recipe_is_the_default():
    assert load_recipe(RECIPES / "tiny" / "grpo.yaml") == load_recipe(None)


@pytest.mark.parametrize("recipe", sorted(p for p in RECIPES.rglob("*.yaml") if p.parent.name != "accelerate"),
                         ids=lambda p: str(p.relative_to(RECIPES)))
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_recipe(recipe)  # unknown keys, wrong types and cross-field errors raise here
    from r1kit.rewards import build_rewards

    build_rewards([{"name": r.name, "weight": r.weight, **r.params} for r in cfg.rewards])  # names and params exist
