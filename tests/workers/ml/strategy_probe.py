"""Run by tests/workers/ml/test_strategy.py under torchrun (gloo, CPU): the held-out loss of one
model measured by one process before sharding (as L0 is) and by the sharded group (as every
checkpoint is), both in bf16 autocast; rank 0 writes both to the JSON file named on the line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from app.core.paths import JobPaths
from app.schemas.jobs import JobRequest
from tests.workers.ml.pipeline_helpers import tiny_llama
from workers.ml import models
from workers.ml.job import JobSpec
from workers.ml.strategy import OneDevice, Sharded
from workers.rank import leave

VOCAB, SEQ = 96, 32


def main(out: Path) -> None:
    torch.set_num_threads(1)
    request = JobRequest.model_validate(
        {
            "model": "m",
            "method": "depth",
            "rho": 0.25,
            "tokens": 4096,
            "dataset": {"path": "d"},
            "devices": 2,
            "device": "cpu",
            "dtype": "bfloat16",
        }
    )
    spec = JobSpec.build(request, JobPaths("/m", Path("/d"), None), cuda=False)
    blocks = torch.randint(0, VOCAB, (7, SEQ), generator=torch.Generator().manual_seed(3))
    dense = tiny_llama(VOCAB, seed=11)
    alone = OneDevice(spec).held_out_loss(dense, blocks, 2)
    dist.init_process_group("gloo")
    strategy = Sharded(spec)
    with models.parameters_on_meta():
        sharded = models.model_from_config(dense.config)
    strategy.parallelize(sharded)
    set_model_state_dict(
        sharded, dense.state_dict(), options=StateDictOptions(full_state_dict=True)
    )
    group = strategy.held_out_loss(sharded, blocks, 2)
    if dist.get_rank() == 0:
        out.write_text(json.dumps({"alone": alone, "sharded": group}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    leave(0)  # as a job's rank ends (workers/rank.py)
