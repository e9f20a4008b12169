"""The tiny GRPO recipe is exactly the built-in default, so `r1kit train` and the recipe agree."""

from pathlib import Path

from r1kit.config import load_recipe

RECIPES = Path(__file__).parent.parent / "recipes"


def test_tiny_grpo_recipe_is_the_default():
    assert load_recipe(RECIPES / "tiny" / "grpo.yaml") == load_recipe(None)
