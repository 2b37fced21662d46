"""How a training run spreads over the processes of a torchrun job: a strategy object the Trainer asks to wrap the
model, to skip the gradient sync of a micro-batch, and to read and load full (unsharded) state dicts.

- `SingleProcess`: one process, the model as it is.
- `DataParallel`: DistributedDataParallel, every rank holds the whole model, optimiser state and EMA.
- `FullyShardedDataParallel`: FSDP2 (`torch.distributed.fsdp.fully_shard`): every transformer block and the rest
  of the model are sharded over the ranks (parameters, gradients, optimiser state and EMA), gathered block by
  block as the forward and backward passes reach them. For the paper-size presets, whose optimiser state does not
  fit next to a full model copy on each GPU.

Every strategy saves the same checkpoint: full state dicts (the model's, the EMA's, and the optimiser's in
torch's own `optimizer.state_dict()` layout), gathered to CPU on rank 0, so a checkpoint of any strategy and
number of processes resumes under any other and loads with `scd.load_model`.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .nn import DiTBlock


class SingleProcess:
    """One process: the model is used as it is; every method is also the data-parallel case's."""

    name = "single"

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """What the objective calls (model is already on `device`); the module itself stays `model`."""
        return model

    def shard_copy(self, module: nn.Module) -> None:
        """Give a copy of the model (the EMA's) the model's layout, so the two update parameter by parameter."""

    def no_sync(self, net: nn.Module):
        """A context in which backward accumulates gradients without syncing them over the ranks."""
        return contextlib.nullcontext()

    def model_state(self, module: nn.Module, main: bool) -> dict[str, torch.Tensor]:
        """The full state dict on CPU on the main process ({} elsewhere); every process calls it."""
        if not main:
            return {}
        return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}

    def load_model_state(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Load a full state dict (every process has it)."""
        module.load_state_dict(state)

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, main: bool) -> dict:
        """torch's `optimizer.state_dict()` layout (state keyed by parameter index) with full tensors."""
        return optimizer.state_dict() if main else {}

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


class DataParallel(SingleProcess):
    """DistributedDataParallel: each rank a whole replica, gradients averaged by all-reduce."""

    name = "ddp"

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        # find_unused_parameters: some parameters (a noisy_current encoder's start token) take no part in a step
        return nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    def no_sync(self, net: nn.Module):
        return net.no_sync()


class FullyShardedDataParallel(SingleProcess):
    """FSDP2: `fully_shard` on every DiTBlock, then on the model (its embeddings, conditioning, heads, encoder
    start token), over a 1-D mesh of all ranks. Gradients are reduce-scattered and averaged like DDP's, so losses
    match a 1-process run with the same global batch. Sampling inside an objective (rollout training) goes
    through `WorldModel.run`, registered as an FSDP forward method, which gathers the model's own weights; the
    blocks gather theirs in their forward."""

    name = "fsdp"

    def __init__(self):
        self.mesh = None

    def _shard(self, module: nn.Module) -> None:
        from torch.distributed.fsdp import fully_shard

        for block in [m for m in module.modules() if isinstance(m, DiTBlock)]:
            fully_shard(block, mesh=self.mesh)
        fully_shard(module, mesh=self.mesh)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import register_fsdp_forward_method

        self.mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
        self._shard(model)  # in place: the model's parameters become DTensor shards (dim 0 split over ranks)
        register_fsdp_forward_method(model, "run")
        return model

    def shard_copy(self, module: nn.Module) -> None:
        # never run forward: its parameters stay sharded like the model's, so EMA updates are shard-local
        self._shard(module)

    def no_sync(self, net: nn.Module):
        @contextlib.contextmanager
        def unsynced():
            net.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                net.set_requires_gradient_sync(True)
        return unsynced()

    @staticmethod
    def _options(**kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def model_state(self, module: nn.Module, main: bool) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        # a collective (every rank sends its shards); with cpu_offload only rank 0 receives, the others get {}
        state = get_model_state_dict(module, options=self._options(cpu_offload=True))
        return {k: v.contiguous() for k, v in state.items()} if main else {}

    def load_model_state(self, module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(module, state, options=self._options())  # each rank keeps its shard of the full dict

    @staticmethod
    def _names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
        """The parameter names in the optimiser's order: index i of torch's layout is names[i]."""
        name_of = {p: n for n, p in module.named_parameters()}
        return [name_of[p] for group in optimizer.param_groups for p in group["params"]]

    def optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, main: bool) -> dict:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(module, optimizer, options=self._options(cpu_offload=True))
        if not main:
            return {}
        # torch.distributed keys the state by parameter name; checkpoints keep torch's index layout
        index = {n: i for i, n in enumerate(self._names(module, optimizer))}
        return {"state": {index[n]: s for n, s in state["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}

    def load_optimizer_state(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        names = self._names(module, optimizer)
        if len(names) != sum(len(g["params"]) for g in state["param_groups"]):
            raise ValueError(f"the checkpoint's optimiser state covers {sum(len(g['params']) for g in state['param_groups'])} "
                             f"parameters, the model has {len(names)}")
        by_name = {"state": {names[i]: s for i, s in state["state"].items()},
                   "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(module, optimizer, by_name, options=self._options())


STRATEGIES = {"ddp": DataParallel, "fsdp": FullyShardedDataParallel}


def strategy(name: str | SingleProcess, world: int) -> SingleProcess:
    """The strategy for `name` ("ddp", "fsdp" or a strategy object) on `world` processes: one process needs none."""
    if isinstance(name, SingleProcess):
        return name if world > 1 else SingleProcess()
    if name not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {name!r}: choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]() if world > 1 else SingleProcess()
