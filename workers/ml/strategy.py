"""Where a job's training runs: one device, or data-parallel over a process group with FSDP2.

The job's pipeline (``workers.ml.pipeline``) is one loop; what differs with the number of
devices is given to it as a strategy, as torchtitan applies parallelism to a model instead of
writing a second training loop:

- :class:`OneDevice`: the model on this process's device, the masks beside it, the held-out
  loss over every block, and no collectives;
- :class:`Sharded`: inside an initialised ``torch.distributed`` group (NCCL on GPUs, gloo on
  CPU), ``fully_shard`` per decoder layer and then the whole model (each device holds 1/N of the
  weights, gradients and AdamW moments), the masks as DTensors laid out like their parameters,
  each rank training on its own rows of the same global batch and evaluating its share of the
  held-out blocks, rank 0 the only one that talks to the hooks.

One numeric recipe whatever the number of devices: fp32 master weights, and bf16 compute (when
the job's dtype is bf16) by ``torch.autocast`` on one device and on N alike, so L0 and the loss
after pruning (measured by one process before any sharding) and every checkpoint (measured by
the group) are the same computation and L − L0 carries no offset between them. The price on N
devices: FSDP2 gathers the fp32 weights (twice the bytes of gathering bf16 ones, as
``MixedPrecisionPolicy(param_dtype=bf16)`` would, which computes differently from autocast).
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from workers.ml import models
from workers.ml.evaluate import block_losses
from workers.ml.job import JobSpec, PipelineError
from workers.ml.train import DataShard, compile_blocks, compile_wanted, configure_cuda

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def compute_dtype(spec: JobSpec) -> torch.dtype | None:
    """The autocast dtype of a one-device job (weights and AdamW state stay fp32 masters)."""
    if spec.dtype not in _DTYPES:
        raise PipelineError(f"unknown dtype {spec.dtype!r} (one of {sorted(_DTYPES)})")
    compute = _DTYPES[spec.dtype]
    return None if compute == torch.float32 else compute


class OneDevice:
    """Training on this process's device alone."""

    rank = 0
    world = 1
    is_main = True

    def __init__(self, spec: JobSpec, device: torch.device | None = None) -> None:
        self.device = device if device is not None else torch.device(spec.device)
        self.autocast_dtype = compute_dtype(spec)
        self.compile = compile_wanted(spec.request.compile, self.device)
        if self.device.type == "cuda":
            configure_cuda()  # TF32 where fp32 runs
        #: Names this launch's temporary state folders (the same in every process of it).
        self.run_id = os.environ.get("TORCHELASTIC_RUN_ID") or uuid.uuid4().hex[:12]

    def per_device_batch(self, spec: JobSpec) -> int:
        """Sequences per device and micro-batch: the job's global batch (``batch_size`` ×
        ``devices``, fixed for the job's life) split over the processes that run it now."""
        global_batch = spec.request.batch_size * spec.devices
        if global_batch % self.world:
            raise PipelineError(
                f"the job's global batch of {global_batch} sequences does not split over "
                f"{self.world} devices"
            )
        return global_batch // self.world

    @property
    def data_shard(self) -> DataShard:
        return DataShard(self.rank, self.world)

    def broadcast(self, value: Any) -> Any:
        """The main process's ``value`` on every process."""
        return value

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes."""
        return values

    def parallelize(self, model: nn.Module) -> None:
        """Place a model built with its parameters on the meta device for training: storage on
        this process's device, values to be loaded; its decoder blocks compiled on CUDA."""
        models.materialize(model, self.device)
        if self.compile:
            compile_blocks(model)

    def held_out_loss(
        self, model: nn.Module, blocks: torch.Tensor, batch_size: int
    ) -> tuple[float, float]:
        """Mean held-out cross-entropy (nats) and its standard error over blocks, the same on
        every process (docs/law.md §3: blocks predict equally many tokens, so the token mean
        is the mean of the block means; tokens of a block are correlated, so the error is taken
        over blocks)."""
        n = int(blocks.shape[0])
        per_rank = -(-n // self.world)
        index = torch.arange(self.rank * per_rank, (self.rank + 1) * per_rank)
        keep = (index < n).double()
        # A sharded forward is a collective: every rank runs as many as the others, so ranks
        # with a block fewer evaluate a copy of their last one and leave it out of the sums.
        losses = block_losses(
            model,
            blocks[index.clamp(max=n - 1)],
            batch_size=batch_size,
            device=self.device,
            autocast_dtype=self.autocast_dtype,
        )
        sums = self.all_reduce_sum(
            torch.stack([(losses * keep).sum(), (losses**2 * keep).sum(), keep.sum()]).to(
                self.device
            )
        ).cpu()
        total, squares, count = (float(v) for v in sums)
        mean = total / count
        if count < 2:
            return mean, float("nan")
        variance = max(0.0, (squares - count * mean * mean) / (count - 1))
        return mean, math.sqrt(variance / count)

    def exported(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
        """The trained model, whole, on the main process (None elsewhere), to save as HF files.

        ``build()`` makes an empty model of the same shape where the weights must be gathered.
        """
        return model


class Sharded(OneDevice):
    """Data-parallel FSDP2 over the initialised process group (see the module docstring)."""

    def __init__(self, spec: JobSpec) -> None:
        if not dist.is_initialized():
            raise PipelineError("a sharded job runs inside an initialised process group")
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        device = torch.device("cpu")
        if spec.device == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        super().__init__(spec, device)  # autocast as on one device: the one numeric recipe

    def broadcast(self, value: Any) -> Any:
        message = [value]
        dist.broadcast_object_list(message, src=0)
        return message[0]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values)
        return values

    def parallelize(self, model: nn.Module) -> None:
        """Shard each decoder layer, then the root, while the parameters are still on the meta
        device; then each rank materialises only its shards."""
        mesh = init_device_mesh(self.device.type, (self.world,))
        if self.compile:  # each block compiled before it is sharded, as torchtitan orders it
            compile_blocks(model)
        # fp32 gathered and reduced; bf16 compute comes from autocast (the module docstring).
        policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
        _, _, layers = models.decoder_layers_owner(model)
        for layer in layers:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        models.materialize(model, self.device)

    def exported(self, model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        whole: nn.Module | None = None
        if self.is_main:
            whole = build()
            whole.load_state_dict(full)
        return whole
