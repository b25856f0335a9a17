"""The recipes study (studies/recipes.py): its design and its measured comparison. The runs
themselves are the study's; the jobs they are made of are tested in tests/workers."""

from __future__ import annotations

import math

import pytest

from studies import recipes


def test_each_recipe_is_the_job_a_user_would_submit() -> None:
    from app.schemas.jobs import JobRequest

    fam = recipes.families(quick=False)["llama"]
    for recipe in recipes.RECIPES:
        cfg = fam.config(recipe)
        assert cfg.recipe_kind == recipe
        request = {
            "model": "m",
            "method": "depth",
            "rho": 0.25,
            "tokens": 1000,
            "dataset": {"path": "x"},
            **({"recipe": cfg.recipe} if cfg.recipe else {}),
        }
        assert JobRequest.model_validate(request).recipe.kind == recipe
    # LoRA at 10x the pass's LR, the others at it; run ids of full runs keep their old form.
    assert fam.config("lora").post_lr == pytest.approx(10 * fam.config("full").post_lr)
    assert fam.config("distill").post_lr == fam.config("full").post_lr
    assert fam.config("full").recipe_suffix == ""
    assert fam.config("lora").recipe_suffix == "-lora"


def test_the_pass_covers_two_sizes_three_recipes_and_three_rho_for_width() -> None:
    fams = recipes.families(quick=False)
    for key in ("llama", "qwen2"):
        assert len(fams[key].cfg.sizes) == 2
        assert fams[key].recipes == recipes.RECIPES
    width = sorted(r for m, r in recipes.SMALL_RUNS if m == "width")
    assert width == [0.15, 0.25, 0.35]
    assert {m for m, _ in recipes.SMALL_RUNS} == {"depth", "width", "2:4"}
    # SmolLM2's full runs are the wide pass's: this pass adds the two other recipes.
    assert fams["smollm2"].recipes == ("lora", "distill")


def test_tokens_to_reach_interpolates_in_log_tokens() -> None:
    curve = [(100.0, 4.0), (1000.0, 3.0), (10_000.0, 2.0)]
    assert recipes.tokens_to_reach(curve, 3.0) == 1000.0
    assert recipes.tokens_to_reach(curve, 2.5) == pytest.approx(math.sqrt(1000 * 10_000))
    assert recipes.tokens_to_reach(curve, 1.9) is None
    assert recipes.tokens_to_reach(curve, 5.0) == 100.0


def _rows(recipe: str, losses: list[float]) -> list[dict[str, object]]:
    return [
        {
            "family": "f",
            "n0": 1000,
            "method": "width",
            "rho": 0.25,
            "recipe": recipe,
            "tokens": 10.0**k,
            "loss": loss,
        }
        for k, loss in enumerate(losses, start=2)
    ]


def test_compare_names_the_recipe_that_reaches_the_common_loss_first() -> None:
    rows = _rows("full", [4.0, 3.0, 2.0]) + _rows("lora", [4.0, 3.5, 2.5])
    rows += _rows("distill", [3.0, 2.5, 2.2])

    def flops(recipe: str, method: str, n0: float, rho: float) -> float:
        return {"full": 6.0, "lora": 4.0, "distill": 8.0}[recipe] * n0 * (1 - rho)

    (entry,) = recipes.compare(rows, flops)
    assert entry["target_loss"] == 2.5  # the highest final loss: every recipe reached it
    reach = {k: v["tokens_to_target"] for k, v in entry["recipes"].items()}
    assert reach["lora"] == 10_000.0 and reach["distill"] == 1000.0
    assert entry["fewest_tokens"] == "distill"
    assert entry["recipes"]["full"]["flops_to_target"] == pytest.approx(reach["full"] * 6.0 * 750)
    # One recipe alone is no comparison.
    assert recipes.compare(_rows("full", [4.0, 3.0]), flops) == []


def test_the_study_counts_flops_as_the_plan_does() -> None:
    # LoRA on a 2:4 model forms its masked update whole: 6 FLOPs a weight, as full training.
    assert recipes.per_token_flops("lora", "2:4", 1000.0, 0.25) == 6000.0
    assert recipes.per_token_flops("lora", "width", 1000.0, 0.25) == 3000.0
    assert recipes.per_token_flops("distill", "depth", 1000.0, 0.25) == 4500.0 + 2000.0
