"""Combinations of config and machine the recipe cannot make correct, refused before any model loads.

Each refusal names the combination and what to use instead. The machine's facts are gathered once
(`MachineFacts.detect`) and passed in, so the rules are tested with stand-in facts on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MachineFacts:
    cuda: bool  # a CUDA GPU is visible
    bf16: bool  # that GPU computes in bfloat16 (Ampere and newer)
    cpu_adam_prebuilt: bool  # DeepSpeed was installed with its CPU Adam op built (DS_BUILD_CPU_ADAM=1)
    cuda_toolkit: bool  # a CUDA toolkit (CUDA_HOME / nvcc) exists, so DeepSpeed can build CPU Adam at run time

    @classmethod
    def detect(cls, need_ops: bool = False) -> MachineFacts:
        """`need_ops`: also ask DeepSpeed which ops it has prebuilt (imports DeepSpeed: a few seconds)."""
        cuda = torch.cuda.is_available()
        prebuilt = toolkit = False
        if need_ops and cuda:
            from deepspeed.git_version_info import installed_ops
            from torch.utils.cpp_extension import CUDA_HOME

            prebuilt, toolkit = bool(installed_ops.get("cpu_adam")), CUDA_HOME is not None
        return cls(
            cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported(), cpu_adam_prebuilt=prebuilt, cuda_toolkit=toolkit
        )


def unsupported_combinations(quantization: str, dtype: str, ds_config: dict, facts: MachineFacts) -> list[str]:
    """One message per combination of `model.quantization`, `model.dtype`, the DeepSpeed JSON and the machine that
    the recipe refuses."""
    problems = []
    zero = ds_config.get("zero_optimization", {})
    if quantization == "int8" and zero.get("stage", 0) == 3:
        # bitsandbytes Int8Params keep CB/SCB beside .data: ZeRO-3 partitions .data only, frees nothing, and the
        # engine's .to() leaves CB/SCB where they were loaded. LLaMA-Factory refuses the same.
        problems.append(
            "model.quantization=int8 with ZeRO-3: ZeRO-3 cannot shard bitsandbytes int8 weights; use "
            "model.quantization=nf4 (4-bit, sharded by ZeRO-3) or deepspeed.config=ds_configs/zero2.json"
        )
    if "offload_optimizer" in zero and facts.cuda and not facts.cpu_adam_prebuilt and not facts.cuda_toolkit:
        problems.append(
            "an optimizer offload config (zero_optimization.offload_optimizer) needs DeepSpeed's CPU Adam op, which "
            "this DeepSpeed has not prebuilt and cannot build without a CUDA toolkit: reinstall with "
            "DS_BUILD_CPU_ADAM=1 (needs nvcc), install the CUDA toolkit, or use ds_configs/zero3.json"
        )
    wants_bf16 = dtype == "bfloat16" or ds_config.get("bf16", {}).get("enabled") is True
    if wants_bf16 and facts.cuda and not facts.bf16:
        problems.append(
            "bfloat16 (model.dtype or the DeepSpeed JSON's bf16) on a GPU without bfloat16 support: use "
            "model.dtype=float16 (and fp16 in the JSON) or float32"
        )
    return problems
