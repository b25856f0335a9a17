"""2:4 Wanda pruning speed: ours vs a plain straightforward implementation of the same score.

Both compute |W|·‖X‖₂ from the dense model's activations on the same calibration batch, keep
the 2 highest of every 4 consecutive inputs per output row, choose the same projections (the
shared subset rule in ``workers.ml.prune.semistructured``), zero the weights and measure ρ. The
plain one is how it is usually first written: a forward hook on every linear of every layer,
the full model forward (LM head included), then a loop over layers, linears and output rows with
a sort per row. Ours: four hooks per layer (q/k/v and gate/up share their input), the decoder
trunk only, one vectorised top-2 over the ``(out, in/4, 4)`` view per projection. The chosen
projections must be the same and the masks may differ only in float32 near-ties (≤ 1e-5 of the
entries), so the comparison is of implementation only.

Model: a Llama from a config (~12M parameters), random weights, fixed seed; calibration: a fixed
batch of random token ids. One warm-up run each, then runs interleaved (ours, plain, ...) and the
median of 3 reported. Single-threaded torch for stable timings on a shared machine.

Run from the repository root: ``python benchmarks/prune_bench.py`` (≈ 1 min); writes
benchmarks/results/prune_bench.json. Target (issue 3): ours ≤ 1.0 × plain.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from transformers import PreTrainedModel  # noqa: E402

from workers.ml.models import (  # noqa: E402
    build_tiny_model,
    count_nonzero,
    count_parameters,
    decoder_layers,
)
from workers.ml.prune import prune  # noqa: E402
from workers.ml.prune.semistructured import choose_subset  # noqa: E402


def plain_wanda_2_4(
    model: nn.Module, calib_ids: torch.Tensor, rho: float, batch_size: int
) -> tuple[dict[str, torch.Tensor], float]:
    """The straightforward version: per-linear hooks, full forward, per-row sort loops."""
    n0 = count_parameters(model)
    nonzero_before = count_nonzero(model)
    names = {id(m): n for n, m in model.named_modules()}
    sq: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str) -> Any:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            x = inputs[0].float()
            s = (x**2).sum(dim=(0, 1))
            sq[name] = s if name not in sq else sq[name] + s

        return hook

    linears: dict[str, nn.Linear] = {}
    for layer in decoder_layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                linears[names[id(module)]] = module
                handles.append(module.register_forward_hook(make_hook(names[id(module)])))
    with torch.no_grad():
        for start in range(0, calib_ids.shape[0], batch_size):
            model(input_ids=calib_ids[start : start + batch_size])
    for h in handles:
        h.remove()

    masks: dict[str, torch.Tensor] = {}
    harms: list[float] = []
    sizes: list[int] = []
    with torch.no_grad():
        for name, linear in linears.items():
            score = linear.weight.abs() * torch.sqrt(sq[name])[None, :]
            mask = torch.ones_like(score, dtype=torch.bool)
            for r in range(score.shape[0]):
                groups = score[r].view(-1, 4)
                order = torch.argsort(groups, dim=1)
                lowest = order[:, :2] + 4 * torch.arange(groups.shape[0])[:, None]
                mask[r, lowest.reshape(-1)] = False
            masks[name + ".weight"] = mask
            harms.append(float(score[~mask].sum() / score.sum()))
            sizes.append(linear.weight.numel() // 2)
        chosen = choose_subset(sizes, harms, rho * n0)
        keys = list(masks)
        selected = {keys[i]: masks[keys[i]] for i in chosen}
        params = dict(model.named_parameters())
        for key, mask in selected.items():
            params[key].mul_(mask)
    return selected, (nonzero_before - count_nonzero(model)) / n0


def main() -> None:
    """Time both implementations and write the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/prune_bench.json")
    parser.add_argument("--rho", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    shape = {
        "vocab_size": 8192,
        "hidden_size": 256,
        "num_layers": 8,
        "num_heads": 8,
        "num_kv_heads": 4,
        "intermediate_size": 1024,
    }
    dense: PreTrainedModel = build_tiny_model("llama", seed=0, **shape)  # type: ignore[arg-type]
    n0 = count_parameters(dense)
    gen = torch.Generator().manual_seed(0)
    calib = torch.randint(3, shape["vocab_size"], (args.sequences, args.seq_len), generator=gen)

    def run_ours() -> tuple[float, dict[str, torch.Tensor], float]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        result = prune(model, "2:4", args.rho, calib, batch_size=args.sequences)
        return time.perf_counter() - start, result.masks, result.rho

    def run_plain() -> tuple[float, dict[str, torch.Tensor], float]:
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        masks, rho = plain_wanda_2_4(model, calib, args.rho, args.sequences)
        return time.perf_counter() - start, masks, rho

    run_ours()  # warm-up: allocator, kernels, lazy imports
    run_plain()
    ours_t: list[float] = []
    plain_t: list[float] = []
    for _ in range(args.repeats):
        t, ours_masks, ours_rho = run_ours()
        ours_t.append(t)
        t, plain_masks, plain_rho = run_plain()
        plain_t.append(t)
    # Same projections chosen; within them the masks may differ where two scores of a group of
    # four tie to float32 rounding (the two sum the squares in a different order).
    same_layers = set(ours_masks) == set(plain_masks)
    total_entries = sum(m.numel() for m in ours_masks.values())
    mismatched = (
        sum(int((ours_masks[k] != plain_masks[k]).sum()) for k in ours_masks)
        if same_layers
        else total_entries
    )
    agree = same_layers and mismatched <= 1e-5 * total_entries
    figures = {
        "benchmark": "2:4 Wanda pruning, ours vs plain",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            "device": "cpu",
        },
        "model": {"architecture": "llama", "n0": n0, **shape},
        "calibration": {"sequences": args.sequences, "seq_len": args.seq_len},
        "target_rho": args.rho,
        "ours": {"times_s": ours_t, "median_s": statistics.median(ours_t), "rho": ours_rho},
        "plain": {"times_s": plain_t, "median_s": statistics.median(plain_t), "rho": plain_rho},
        "ratio_ours_over_plain": statistics.median(ours_t) / statistics.median(plain_t),
        "same_layers_chosen": same_layers,
        "mask_entries_differing": mismatched,
        "mask_entries_total": total_entries,
        "sparsified_layers": len(ours_masks),
        "target": "ours <= 1.0 x plain",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    if not agree:
        raise SystemExit("the implementations chose different weights")


if __name__ == "__main__":
    main()
