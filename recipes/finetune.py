"""CGC-LoRA multi-task fine-tuning on DeepSpeed. One file, read top to bottom.

    deepspeed --num_gpus 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml train.max_steps=8
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml
    python recipes/finetune.py --config recipes/configs/tiny_cpu.yaml          # one process

config -> data (validated before anything distributed starts) -> process group -> base model (optionally 4-bit
NF4 / 8-bit) -> cgc.attach -> tokenised data + cluster-aware sampler -> deepspeed.initialize -> resume -> train
(checkpoints, SIGTERM/SIGINT = checkpoint and exit 0) -> per-task eval -> adapters/ (cgc + one PEFT LoRA per task).
On machines without GPUs the same code runs on CPU ranks over gloo.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

import cgc
from cgc import checkpoint as ckpt
from cgc.data import DataError, check_tasks, load_examples
from cgc.distributed import (
    all_reduce_sum,
    any_rank,
    barrier,
    clear_zero3_gradient_partitions,
    error_exit,
    free_port,
    gathered,
    max_over_ranks,
    print0,
    rank0_first,
)
from cgc.evaluation import generate_answers, markdown_table, pick_examples, score_tasks, write_results
from cgc.metrics import task_metrics
from cgc.recipe_config import ConfigError, RecipeConfig, load_recipe_config
from cgc.sampler import ClusterAwareBatchSampler
from cgc.tokenization import IGNORE_INDEX, MultiTaskCollator, tokenize_dataset


def main(argv: list[str] | None = None) -> None:
    # ---- 1. config and data: fail fast, before any process group or model exists ------------------------
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        cgc_config = cfg.cgc_config  # built (and validated) once: the property makes a new one on every access
        clusters = cgc_config.clusters
        train_raw = load_examples(cfg.data.train_files, cfg.data.format, cfg.data.task_field)
        check_tasks(train_raw, clusters)
        eval_raw = (
            load_examples(cfg.data.eval_files, cfg.data.format, cfg.data.task_field) if cfg.data.eval_files else None
        )
        if eval_raw is not None:
            check_tasks(eval_raw, clusters)
        metrics = task_metrics(cgc_config.tasks, cfg.eval.default_metric, cfg.eval.metrics)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        ds_config = deepspeed_config(cfg, world)
    except (ConfigError, DataError) as err:
        error_exit(str(err))
    zero3 = ds_config["zero_optimization"].get("stage", 0) == 3
    out = Path(cfg.output_dir)
    checkpoints = out / "checkpoints"

    # ---- 2. process group: nccl on GPUs, gloo on CPU ranks --------------------------------------------------
    import deepspeed  # a slow import: only once the config is known to be good

    if "RANK" not in os.environ:  # plain `python recipes/finetune.py`: a run of world size 1
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank()
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)

    # ---- 3. base model and CGC-LoRA -------------------------------------------------------------------------
    model, tokenizer, hf_ds_config = build_base_model(cfg, ds_config, zero3)
    try:
        model = cgc.attach(model, cgc_config)
    except ValueError as err:  # e.g. target_modules matching nothing: a config problem, not a crash
        error_exit(f"cgc: {err}")
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainable_params = model.num_trainable_parameters()
    tasks, cluster_of = model.tasks, cgc_config.cluster_of  # looked up per sample in the loop below
    counts = f"{len(clusters)} clusters, {len(tasks)} tasks, {trainable_params:,} trainable"
    print0(f"CGC-LoRA on {cfg.model.name_or_path}: {counts}")

    # ---- 4. data: tokenised once (rank 0 fills the datasets cache), one cluster per micro-step on all ranks -
    task_ids = {t: model.task_id(t) for t in tasks}
    with rank0_first():
        train_set, report = tokenize_dataset(
            train_raw, tokenizer, task_ids, cfg.data.max_length, system_prompt=cfg.data.system_prompt
        )
    print0("\n".join(report.lines()))
    sampler = ClusterAwareBatchSampler(
        train_set["task"],
        clusters,
        cfg.train.micro_batch_size,
        world_size=world,
        rank=rank,
        seed=cfg.seed,
        mixing=cfg.sampler.mixing,
        temperature=cfg.sampler.temperature,
        cluster_per=cfg.sampler.cluster_per,
        grad_accum=cfg.train.grad_accum,
    )
    # num_workers=0: the sampler's position is then exactly what training consumed, which the checkpoint stores.
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, collate_fn=MultiTaskCollator(tokenizer.pad_token_id)
    )

    # ---- 5. optimizer (experts and gates at their own learning rates), schedule, DeepSpeed engine -----------
    groups = model.optimizer_groups(cfg.train.lr, cfg.train.gate_lr, cfg.train.weight_decay)
    if "offload_optimizer" in ds_config["zero_optimization"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups)
    else:
        optimizer = torch.optim.AdamW(groups)
    from transformers import get_scheduler

    try:
        resume_dir = ckpt.resolve_resume(cfg.resume, checkpoints)
    except ValueError as err:
        error_exit(str(err))
    if resume_dir is not None:
        if ckpt.is_universal(resume_dir):
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
        elif ckpt.saved_world_size(resume_dir) != world:
            error_exit(
                f"{resume_dir} was saved by {ckpt.saved_world_size(resume_dir)} ranks and this run has {world}: "
                f"convert it first with `python -m cgc.checkpoint to-universal {resume_dir}` and resume from the "
                "*_universal directory it writes"
            )
    schedule = "constant_with_warmup" if cfg.train.schedule == "constant" else cfg.train.schedule
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    base_bytes_total, base_bytes_rank = base_param_bytes(engine.module)

    # ---- 6. resume ------------------------------------------------------------------------------------------
    step = 0
    if resume_dir is not None:
        _, client_state = engine.load_checkpoint(
            str(resume_dir.parent),
            tag=resume_dir.name,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        step = client_state["step"]
        if ckpt.is_universal(resume_dir):
            # Sampler positions of another world size do not map onto this run's batches: start the next epoch.
            epoch = ckpt.read_rank_state(resume_dir, 0)["sampler"]["epoch"]
            sampler.set_epoch(epoch + 1)
            print0(f"resumed from universal checkpoint {resume_dir} at step {step}; data restarts at epoch {epoch + 1}")
        else:
            state = ckpt.read_rank_state(resume_dir, rank)
            sampler.load_state_dict(state["sampler"])
            ckpt.set_rng_state(state["rng"])
            print0(f"resumed from {resume_dir} at step {step}")

    # ---- 7. train --------------------------------------------------------------------------------------------
    log = RunLog(out, cgc_config.num_shared_experts, rank, resume_from=step)
    preempted = Preemption()
    progress = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", disable=rank != 0)
    micro_batches = endless(loader)
    stop_at = min(cfg.train.max_steps, step + cfg.train.stop_after) if cfg.train.stop_after else cfg.train.max_steps
    engine.train()
    last_saved, train_seconds, total_tokens, final_loss = step, 0.0, 0.0, float("nan")
    while step < stop_at:
        tick = time.time()
        sums: dict[str, float] = {}  # "loss", "tokens", "seen", "task/<t>", "task_n/<t>", "cluster/<c>", ...
        step_clusters, step_tasks = [], set()
        for _ in range(cfg.train.grad_accum):
            batch = {k: v.to(engine.device) for k, v in next(micro_batches).items()}
            cluster = cluster_of[tasks[int(batch["task_ids"][0])]]
            logits = engine(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], task_ids=batch["task_ids"]
            ).logits
            loss, per_sample, per_sample_tokens = token_loss(logits, batch["labels"])
            engine.backward(loss)
            engine.step()
            step_clusters.append(cluster)
            add(sums, "loss", loss.item() / cfg.train.grad_accum)
            add(sums, "seen", float(batch["attention_mask"].sum()))
            add(sums, f"cluster/{cluster}", loss.item())
            add(sums, f"cluster_n/{cluster}", 1.0)
            for tid, s, n in zip(
                batch["task_ids"].tolist(), per_sample.tolist(), per_sample_tokens.tolist(), strict=True
            ):
                add(sums, f"task/{tasks[tid]}", s)
                add(sums, f"task_n/{tasks[tid]}", n)
                step_tasks.add(tasks[tid])
        grad_norm = optional_float(engine.get_global_grad_norm())
        if zero3:
            clear_zero3_gradient_partitions(engine)
        step += 1
        keys = sorted(
            set(sums)
            | {f"{k}/{c}" for k in ("cluster", "cluster_n") for c in clusters}
            | {f"{k}/{t}" for k in ("task", "task_n") for t in tasks}
        )
        totals = dict(zip(keys, all_reduce_sum([sums.get(k, 0.0) for k in keys]), strict=True))
        final_loss = totals["loss"] / world
        if not math.isfinite(final_loss):
            error_exit(
                f"loss is {final_loss} at step {step}; this rank's batch held tasks {sorted(step_tasks)}", code=3
            )
        elapsed = time.time() - tick
        train_seconds += elapsed
        total_tokens += totals["seen"]
        if step % cfg.train.log_every == 0 or step == stop_at:
            record = {
                "step": step,
                "loss": final_loss,
                "lr": scheduler.get_last_lr()[0],
                "tokens_per_s": totals["seen"] / elapsed,
                "cluster": step_clusters[0] if len(set(step_clusters)) == 1 else step_clusters,
                "task_losses": {t: totals[f"task/{t}"] / totals[f"task_n/{t}"] for t in tasks if totals[f"task_n/{t}"]},
                "cluster_losses": {
                    c: totals[f"cluster/{c}"] / totals[f"cluster_n/{c}"] for c in clusters if totals[f"cluster_n/{c}"]
                },
                "grad_norm": grad_norm,
            }
            with gathered((p for n, p in model.trainable_parameters() if n.endswith("gate_logits")), zero3):
                gates_now = {t: mean_gate(model, t) for t in tasks}
            log.write(record, gates_now)
            progress.set_postfix(loss=f"{final_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        progress.update()
        stopping = any_rank(preempted.requested)
        if stopping or step == stop_at or (cfg.train.save_every and step % cfg.train.save_every == 0):
            save_checkpoint(engine, sampler, checkpoints, step, world)
            last_saved = step
        if stopping:
            print0(f"\nstopped by {preempted.signal_name} at step {step}; checkpoint: {checkpoints / f'step_{step}'}")
            break
    progress.close()
    if last_saved != step:
        save_checkpoint(engine, sampler, checkpoints, step, world)
    finished = step >= cfg.train.max_steps

    # ---- 8. eval, adapters, summary -------------------------------------------------------------------------
    if finished and eval_raw is not None and cfg.eval.max_examples_per_task:
        examples = pick_examples(eval_raw, cfg.eval.max_examples_per_task, tasks)
        e = cfg.eval
        answers = generate_answers(
            engine.module, tokenizer, examples, e.batch_size, e.max_new_tokens, cfg.data.system_prompt, zero3
        )
        results = score_tasks(examples, answers, metrics, cluster_of)
        if rank == 0:
            write_results(out, results, examples, answers)
            print0(f"\nper-task scores (greedy, held-out examples; {out / 'eval.md'}):\n{markdown_table(results)}")
    if finished:
        with gathered((p for _, p in model.trainable_parameters()), zero3):
            if rank == 0:
                model.save_adapter(out / "adapters" / "cgc")
                for task in tasks:
                    cgc.export_peft_adapter(model, task, out / "adapters" / "peft" / task)
    peak_rss = max_over_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    summary = {
        "world_size": world,
        "zero_stage": ds_config["zero_optimization"].get("stage", 0),
        "quantization": cfg.model.quantization,
        "steps": step,
        "finished": finished,
        "final_loss": final_loss,
        "trainable_params": trainable_params,
        "base_param_bytes_total": base_bytes_total,
        "base_param_bytes_per_rank": max_over_ranks(base_bytes_rank),
        "peak_rss_mb": peak_rss,
        "tokens_per_s": total_tokens / max(train_seconds, 1e-9),  # training steps only (no load, eval, saves)
    }
    if rank == 0:
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print0(f"\nrun summary: {out / 'run_summary.json'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}")
        if finished:
            print0(f"adapters: {out / 'adapters' / 'cgc'} (cgc), {out / 'adapters' / 'peft'} (one PEFT LoRA per task)")
    log.close()
    barrier()
    del hf_ds_config


# ==== the pieces main() calls, in order =========================================================================


def deepspeed_config(cfg: RecipeConfig, world: int) -> dict:
    """The static JSON of `deepspeed.config` with the batch fields filled from the YAML, and checked."""
    with open(cfg.deepspeed.config) as f:
        ds = json.load(f)
    micro, accum = cfg.train.micro_batch_size, cfg.train.grad_accum
    wanted = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world,
    }
    clash = [f"{k}={ds[k]} (the YAML gives {v})" for k, v in wanted.items() if ds.get(k, "auto") not in ("auto", v)]
    if clash:
        raise ConfigError(
            f"{cfg.deepspeed.config} sets batch sizes that disagree with train_batch = micro x accumulation x world "
            f"= {micro} x {accum} x {world}: {', '.join(clash)}; remove them from the JSON, the recipe fills them"
        )
    ds.update(wanted)
    ds.setdefault("zero_optimization", {"stage": 0})
    ds.setdefault("gradient_clipping", cfg.train.max_grad_norm)
    ds.setdefault("steps_per_print", 10**9)  # the recipe logs; DeepSpeed's own step prints would duplicate it
    if cfg.model.dtype == "bfloat16":
        ds.setdefault("bf16", {"enabled": True})
    elif cfg.model.dtype == "float16":
        ds.setdefault("fp16", {"enabled": True})
    return ds


def build_base_model(cfg: RecipeConfig, ds_config: dict, zero3: bool):
    """-> (model, tokenizer, HfDeepSpeedConfig or None). The last must stay alive while the model is built."""
    from transformers.integrations import HfDeepSpeedConfig

    from cgc.base_model import load_recipe_model

    # Unquantized under ZeRO-3: shard while loading (zero.Init). bitsandbytes models load in full on every rank
    # and are sharded by deepspeed.initialize.
    hf_ds_config = HfDeepSpeedConfig(ds_config) if zero3 and cfg.model.quantization == "none" else None
    m = cfg.model
    model, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, m.quantization, m.dtype, seed=cfg.seed)
    return model, tokenizer, hf_ds_config


def base_param_bytes(model: cgc.CGCModel) -> tuple[int, int]:
    """Bytes of the frozen base: in all, and held by this rank (ZeRO-3 keeps only a partition, `ds_tensor`)."""
    adapter = {id(p) for _, p in model.trainable_parameters()}
    total = local = 0
    for p in model.parameters():
        if id(p) in adapter:
            continue
        total += getattr(p, "ds_numel", p.numel()) * p.element_size()
        local += (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()
    return total, local


def endless(loader):
    while True:  # each pass is one sampler epoch
        yield from loader


def token_loss(logits: torch.Tensor, labels: torch.Tensor):
    """Mean loss over target tokens, plus per-sample sums and token counts (for per-task losses)."""
    # position t predicts token t+1: (B, T-1, V) against (B, T-1)
    per_token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    per_sample = (per_token * mask).sum(dim=1).detach()
    tokens = mask.sum(dim=1)
    return per_token.sum() / tokens.sum().clamp_min(1), per_sample, tokens


def optional_float(value) -> float | None:
    return None if value is None else float(value)


def add(sums: dict, key: str, value: float) -> None:
    sums[key] = sums.get(key, 0.0) + value


def mean_gate(model: cgc.CGCModel, task: str) -> list[float]:
    gates = list(model.gate(task).values())
    return torch.stack(gates).mean(dim=0).tolist()


class RunLog:
    """metrics.jsonl (one object per logged step) and TensorBoard scalars, written by rank 0."""

    def __init__(self, out: Path, num_shared: int, rank: int, resume_from: int):
        self.rank, self.num_shared = rank, num_shared
        self.path = out / "metrics.jsonl"
        self.writer = None
        if rank != 0:
            return
        if self.path.exists():  # a resumed run continues the file; steps after the checkpoint are re-run
            kept = [
                line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_from
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_from + 1 if resume_from else None)

    def write(self, record: dict, gates: dict[str, list[float]]) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step, w = record["step"], self.writer
        for key in ("loss", "lr", "tokens_per_s", "grad_norm"):
            if record[key] is not None:
                w.add_scalar(f"train/{key}", record[key], step)
        for task, value in record["task_losses"].items():
            w.add_scalar(f"loss_task/{task}", value, step)
        for cluster, value in record["cluster_losses"].items():
            w.add_scalar(f"loss_cluster/{cluster}", value, step)
        S = self.num_shared
        for task, weights in gates.items():
            for k, g in enumerate(weights):
                w.add_scalar(f"gate/{task}/{'shared' if k < S else 'own'}{k if k < S else k - S}", g, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Preemption:
    """SIGTERM/SIGINT set a flag; the loop checkpoints at the next step boundary and exits 0."""

    def __init__(self):
        self.requested, self.signal_name = False, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name


def save_checkpoint(engine, sampler, checkpoints: Path, step: int, world: int) -> None:
    tag = f"step_{step}"
    engine.save_checkpoint(str(checkpoints), tag=tag, client_state={"step": step}, exclude_frozen_parameters=True)
    ckpt.write_rank_state(checkpoints / tag, dist.get_rank(), sampler.state_dict())
    barrier()  # every rank's files are on disk before the marker says the checkpoint is whole
    if dist.get_rank() == 0:
        ckpt.mark_complete(checkpoints / tag, step, world)
    barrier()


if __name__ == "__main__":
    sys.exit(main())
