"""`cgc.attach`, `CGCModel` and adapter save/load."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cgc.adapter.config import CGCLoraConfig
from cgc.adapter.gates import ClusterGates
from cgc.adapter.layer import CGCLinear
from cgc.adapter.routing import Router, Routing

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def attach(base_model: nn.Module, config: CGCLoraConfig) -> CGCModel:
    """Freeze `base_model` and wrap every target linear layer with CGC-LoRA experts."""
    return CGCModel(base_model, config)


def load_adapter(base_model: nn.Module, path: str | os.PathLike, is_trainable: bool = False) -> CGCModel:
    """Attach the adapter saved by `CGCModel.save_adapter` at `path` to `base_model`.

    Like PEFT's `from_pretrained`, the loaded experts are frozen unless `is_trainable=True`.
    """
    model = attach(base_model, CGCLoraConfig.load(path))
    expected = dict(model.trainable_parameters())
    load_weights(model, path)
    model.requires_grad_(False)
    if is_trainable:
        for param in expected.values():
            param.requires_grad_(True)
    return model


def load_weights(model: CGCModel, path: str | os.PathLike, partial: bool = False) -> list[str]:
    """Copy the adapter tensors saved at `path` into `model`'s. `partial`: `model` may have parameters the file
    lacks (a grown model's new clusters, cgc.adapter.growth); every saved tensor must still fit. -> the names
    loaded."""
    weights_path = os.path.join(path, ADAPTER_WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in {path}")
    saved = stacked_gates(load_file(weights_path), model)
    expected = dict(model.trainable_parameters())
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if (missing and not partial) or unexpected:
        raise ValueError(
            f"adapter at {path} does not fit this base model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for name in saved:
            param = expected[name]
            if saved[name].shape != param.shape:
                raise ValueError(
                    f"adapter at {path} does not fit this base model: {name} has shape "
                    f"{tuple(saved[name].shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(saved[name])
    return sorted(saved)


def stacked_gates(saved: dict[str, torch.Tensor], model: CGCModel) -> dict[str, torch.Tensor]:
    """An adapter saved before the gates moved out of the layers held one `<layer>.experts.<cluster>.gate_logits`
    (T_c, S+K) per layer: stack them, in the model's layer order, into `gates.<cluster>.gate_logits` (L, T_c, S+K)."""
    per_layer = [n for n in saved if n.endswith(".gate_logits") and ".experts." in n]
    if not per_layer:
        return saved
    saved = dict(saved)
    for cluster in model.task_map.clusters:
        names = [f"{layer}.experts.{cluster}.gate_logits" for layer in model.adapted_layers()]
        if names[0] in saved:
            saved[f"gates.{cluster}.gate_logits"] = torch.stack([saved.pop(n) for n in names])
    return saved


def find_target_names(base_model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Names of the modules matched by `target_modules`, with PEFT's matching rules."""
    names = []
    for name, _ in base_model.named_modules():
        if not name:
            continue
        if isinstance(target_modules, str):
            matched = re.fullmatch(target_modules, name) is not None
        else:
            matched = any(name == t or name.endswith("." + t) for t in target_modules)
        if matched:
            names.append(name)
    return names


class CGCModel(nn.Module):
    """A frozen base model plus CGC-LoRA experts. Call it like the base model, with `task_ids`."""

    def __init__(self, base_model: nn.Module, config: CGCLoraConfig):
        super().__init__()
        if not isinstance(config, CGCLoraConfig):
            raise ValueError(f"config must be a cgc.CGCLoraConfig, got {type(config).__name__}")
        if any(isinstance(m, CGCLinear) for m in base_model.modules()):
            raise ValueError("base_model already has CGC-LoRA layers: attach once, to an unadapted model")
        self.base_model = base_model
        self.cgc_config = config
        self.task_map = config.task_map
        self._router = Router(config)
        base_model.requires_grad_(False)
        self._wrap_targets()

    def _wrap_targets(self) -> None:
        names = find_target_names(self.base_model, self.cgc_config.target_modules)
        if not names:
            linears = [n for n, m in self.base_model.named_modules() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"target_modules={self.cgc_config.target_modules!r} matched no module; "
                f"linear modules in this model include {linears[:6]}"
            )
        for index, name in enumerate(names):
            module = self.base_model.get_submodule(name)
            # bitsandbytes Linear4bit and Linear8bitLt subclass nn.Linear.
            if not isinstance(module, nn.Linear):
                raise ValueError(
                    f"target module {name!r} is a {type(module).__name__}; CGC-LoRA adapts nn.Linear and "
                    "bitsandbytes Linear4bit/Linear8bitLt layers only"
                )
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, CGCLinear(module, self.cgc_config, self._router, layer_index=index))
        device = next(iter(self.adapted_layers().values())).experts[self.task_map.clusters[0]].lora_A.device
        # Every cluster's gates for every layer, one module per cluster that forward calls once (cgc.adapter.gates).
        self.gates = nn.ModuleDict(
            {
                c: ClusterGates(
                    len(ts), len(names), self.cgc_config, device, task_path=c not in self.cgc_config.extends
                )
                for c, ts in self.cgc_config.clusters.items()
            }
        )

    # ---- tasks and routing ------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return self.cgc_config.tasks

    def task_id(self, task: str) -> int:
        return self.task_map.id_of(task)

    def task_ids_tensor(self, tasks: Sequence[int | str] | torch.Tensor, device=None) -> torch.Tensor:
        """Validated LongTensor[B] of task ids from ids or task names, checked on the host: give CPU task ids (a
        tensor on a GPU is copied to the host first, which waits for the GPU)."""
        if isinstance(tasks, torch.Tensor):
            if tasks.dim() != 1 or tasks.dtype.is_floating_point or tasks.dtype.is_complex or tasks.dtype == torch.bool:
                raise ValueError(
                    f"task_ids must be an integer tensor of shape (batch,), got {tasks.dtype} {tuple(tasks.shape)}"
                )
            ids = tasks.long().cpu()
        else:
            ids = torch.tensor([self.task_id(t) if isinstance(t, str) else int(t) for t in tasks], dtype=torch.long)
        values = ids.tolist()  # host values: no tensor op, no device sync
        if values:
            low, high = min(values), max(values)
            self.task_map.name_of(low if low < 0 else high)  # raises for an id out of range
        return ids.to(device) if device is not None else ids

    def _set_routing(self, args: tuple, kwargs: dict, task_ids, every_cluster: bool) -> None:
        if task_ids is None:
            raise ValueError("task_ids is required: one task id (or task name) per sample")
        batch = _batch_tensor(args, kwargs)
        ids = self.task_ids_tensor(task_ids)  # on the host
        if batch is not None and len(ids) != batch.shape[0]:
            raise ValueError(f"task_ids has {len(ids)} entries but the batch has {batch.shape[0]} samples")
        device = batch.device if batch is not None else self.gates[self.task_map.clusters[0]].active.device
        routing = self._router.route(ids, device, every_cluster=every_cluster)
        # The gates of every layer, once per forward, per cluster in the routing's fixed order (the same submodule
        # calls on every rank under ZeRO-3); each layer takes its slice.
        slices = [
            dataclasses.replace(s, scales=self.gates[s.cluster](s.local_tasks, s.single_task)) for s in routing.slices
        ]
        self._router.set(Routing(routing.batch_size, tuple(slices)))

    def forward(self, *args, task_ids=None, every_cluster: bool = False, **kwargs):
        """`every_cluster=True` runs every cluster's experts on every call, empty slices included, in a fixed order.
        The caller sets it when ZeRO-3 ranks may hold batches of different clusters (sharded evaluation): every
        rank must then call the same submodules. In training the sampler keeps all ranks on one cluster."""
        self._set_routing(args, kwargs, task_ids, every_cluster)
        compiled = self.__dict__.get("_compiled_base")
        return (self.base_model if compiled is None else compiled)(*args, **kwargs)

    @property
    def is_compiled(self) -> bool:
        """Whether `compile` was called: forward runs the compiled base."""
        return "_compiled_base" in self.__dict__

    def compile(self, **kwargs) -> None:
        """`torch.compile` the base model's forward with its CGC-LoRA layers (`kwargs`: torch.compile's); forward
        uses it from the next call. Routing stays eager: it reads task ids on the host and builds index tensors,
        Python that a graph cannot hold. Each routing a batch has (its cluster, or mix of clusters) compiles one
        graph the first time it is seen. `generate` stays eager: decoding changes the sequence length every token.
        Parameters, state_dict and saved adapters are unchanged."""
        # in __dict__, not through nn.Module.__setattr__: not registered as a submodule
        self.__dict__["_compiled_base"] = torch.compile(self.base_model, **kwargs)
        if "_checkpointing" in self.__dict__:
            ckpt_kwargs, kwargs = self.__dict__["_checkpointing"]
            self.gradient_checkpointing_enable(ckpt_kwargs, **kwargs)  # again, for the compiled graph

    def generate(self, *args, task_ids=None, every_cluster: bool = False, **kwargs):
        self._set_routing(args, kwargs, task_ids, every_cluster)
        return self.base_model.generate(*args, **kwargs)

    # ---- introspection ----------------------------------------------------------------------------
    def adapted_layers(self) -> dict[str, CGCLinear]:
        """Adapted layers by their name in the base model (e.g. 'model.layers.0.self_attn.q_proj')."""
        return {n: m for n, m in self.base_model.named_modules() if isinstance(m, CGCLinear)}

    def gate(self, task: str) -> dict[str, torch.Tensor]:
        """Layer name -> g_t, the gate weights task `task` gives its cluster's shared experts then its own."""
        place = self.task_map.place(task)
        with torch.no_grad():
            gates = self.gates[place.cluster].gate()[:, place.local_index]  # (L, S+K)
            return {name: gates[layer.layer_index].clone() for name, layer in self.adapted_layers().items()}

    def task_scales(self, task: str) -> torch.Tensor:
        """(L, R): task `task`'s weights on the rank rows of its own S + K experts, for every adapted layer."""
        place = self.task_map.place(task)
        return self.gates[place.cluster].task_scales(place.local_index)

    def trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of every CGC-LoRA tensor: each layer's experts (names relative to the base model, as
        `<layer>.experts.<cluster>.lora_A`), then each cluster's gates (`gates.<cluster>.gate_logits`). Every name
        contains its cluster's name as one dotted component."""
        for layer_name, layer in self.adapted_layers().items():
            for name, param in layer.experts.named_parameters():
                yield f"{layer_name}.experts.{name}", param
        for name, param in self.gates.named_parameters():
            yield f"gates.{name}", param

    def num_trainable_parameters(self) -> int:
        # ZeRO-3 leaves an empty placeholder in `p` and keeps the full size in `ds_numel`.
        return sum(getattr(p, "ds_numel", p.numel()) for _, p in self.trainable_parameters())

    def optimizer_groups(
        self, lr: float, gate_lr: float, weight_decay: float = 0.0, clusters: Sequence[str] | None = None
    ) -> list[dict]:
        """Optimizer parameter groups: "experts" at `lr` (with weight decay), "gates" (the gate logits) at `gate_lr`
        (without). Each group carries its `name`, for logging its learning rate. `clusters`: only these clusters'
        parameters (the others are frozen: e.g. clusters with no training data, which no step could move)."""
        if clusters is not None:
            for cluster in set(self.task_map.clusters) - set(clusters):
                for param in self.cluster_parameters(cluster):
                    param.requires_grad_(False)
        training = [(n, p) for n, p in self.trainable_parameters() if p.requires_grad]
        # train.extend_shared: tensors whose own-expert rows are detached (ClusterExperts.shared_train_only) must not
        # decay, or those rows would move without a gradient
        partly = {id(p) for layer in self.adapted_layers().values() for e in layer.experts.values()
                  if e.shared_train_only for p in (e.lora_A, e.lora_B)}  # fmt: skip
        experts = [p for n, p in training if not n.endswith("gate_logits") and id(p) not in partly]
        shared = [p for n, p in training if id(p) in partly]
        gates = [p for n, p in training if n.endswith("gate_logits")]
        groups = [{"name": "experts", "params": experts, "lr": lr, "weight_decay": weight_decay}]
        if shared:
            groups.append({"name": "extended_shared", "params": shared, "lr": lr, "weight_decay": 0.0})
        if gates:  # configurations with one expert per task have no gate
            groups.append({"name": "gates", "params": gates, "lr": gate_lr, "weight_decay": 0.0})
        return groups

    def cluster_parameters(self, cluster: str) -> list[nn.Parameter]:
        if cluster not in self.task_map.clusters:
            raise ValueError(f"unknown cluster {cluster!r}; clusters: {list(self.task_map.clusters)}")
        # exactly its experts and gates: a cluster may share its name with a module ("mlp", "layers", "0")
        mine = (f".experts.{cluster}.", f"gates.{cluster}.")
        return [p for n, p in self.trainable_parameters() if mine[0] in n or n.startswith(mine[1])]

    # ---- persistence ------------------------------------------------------------------------------
    def save_adapter(self, path: str | os.PathLike) -> None:
        """Write the config and the trainable tensors only (safetensors), never base weights."""
        os.makedirs(path, exist_ok=True)
        self.cgc_config.save(path)
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.trainable_parameters()}
        # one metadata key: safetensors writes several in hash-map order, and the same adapter must be the same bytes
        # (a grown run records its init_from by hash, cgc.adapter.growth)
        save_file(tensors, os.path.join(path, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})

    # ---- training helpers -------------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """Non-reentrant activation checkpointing whose recomputation runs under the forward's routing."""
        ckpt_kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if ckpt_kwargs["use_reentrant"]:
            raise ValueError("CGC-LoRA supports non-reentrant checkpointing only (use_reentrant=False)")
        if not self.is_compiled:
            # eager: recomputation runs after forward returned, so it pins the forward's routing. A compiled graph
            # holds the routing's tensors as its inputs, and dynamo cannot trace a context_fn.
            ckpt_kwargs["context_fn"] = self._router.checkpoint_context
        self.__dict__["_checkpointing"] = (gradient_checkpointing_kwargs, kwargs)
        enable = getattr(self.base_model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=ckpt_kwargs, **kwargs)
        else:
            self.base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs, **kwargs)

    def __getattr__(self, name: str):
        # Fall through to the base model (config, device, dtype, ...) as PEFT's wrappers do.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)


def _batch_tensor(args, kwargs) -> torch.Tensor | None:
    for key in ("input_ids", "inputs_embeds"):
        if kwargs.get(key) is not None:
            return kwargs[key]
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    return None
