"""Recovery recipes: how a pruned model is post-trained (torch-free; docs/jobs.md, "Recipes").

- ``full``: every weight of the pruned model trains (the P² paper's post-training);
- ``lora``: the pruned weights are frozen and low-rank adapters train on the chosen projections
  (LLM-Pruner's recipe); the saved model has them merged, every pruned zero kept;
- ``distill``: every weight trains against the frozen dense model before pruning, by
  ``alpha · T² · KL(teacher ‖ student at T) + (1 − alpha) · LM loss`` (Minitron's recipe).

Every recipe is measured on one axis: the LM cross-entropy on the job's fixed held-out set, so
observations of different recipes share a protocol and differ by ``recipe`` alone. A law is
fitted per recipe, never across them.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

RecipeName = Literal["full", "lora", "distill"]
RECIPES: Final[tuple[str, ...]] = get_args(RecipeName)
DEFAULT_RECIPE: Final = "full"

#: LoRA's default targets: every attention and MLP projection of a Llama or Qwen2 decoder layer,
#: in the order of ``app.core.memory.ModelShape.projections`` (``PROJECTION_NAMES`` is this).
LORA_TARGETS: Final[tuple[str, ...]] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
