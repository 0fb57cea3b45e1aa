"""CGC-LoRA multi-task fine-tuning on DeepSpeed. One file, read top to bottom.

    deepspeed --num_gpus 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml train.max_steps=8
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml
    python recipes/finetune.py --config recipes/configs/tiny_cpu.yaml          # one process

`main` runs the phases in order, each a function below it with its inputs and outputs in its signature:
load_inputs (config and raw data, validated before any process group or model exists) -> start_process_group
-> setup_model (base model, optionally 4-bit NF4 / 8-bit, + cgc.attach) -> setup_data (tokenised data and the
cluster-aware sampler) -> setup_engine (optimizer, schedule, deepspeed.initialize) -> resume -> train
(checkpoints; SIGTERM/SIGINT = checkpoint and exit 0) -> finish (per-task eval, adapters/, run_summary.json).
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
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import yaml
from tqdm import tqdm

import cgc
from cgc import checkpoint as ckpt
from cgc import deepspeed_ops, distributed, run_identity
from cgc.data import DataError, check_tasks, load_examples, task_counts
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
from cgc.metrics import MetricSpec, task_metrics
from cgc.recipe_config import ConfigError, RecipeConfig, load_recipe_config
from cgc.recipe_inputs import (
    check_step_fits_a_cluster,
    check_writable,
    deepspeed_config,
    single_rank_stage,
    warn_empty_targets,
)
from cgc.run_log import PhaseTimes, RunLog, StepStats
from cgc.sampler import ClusterAwareBatchSampler
from cgc.support import MachineFacts, unsupported_combinations
from cgc.target_loss import forward_on_targets, takes_logits_to_keep, target_tokens, token_loss
from cgc.tokenization import MultiTaskCollator, tokenize_dataset


def main(argv: list[str] | None = None) -> None:
    inputs = load_inputs(argv)
    cfg, out = inputs.cfg, Path(inputs.cfg.output_dir)
    rank, world = start_process_group(inputs.ds_config, cfg.train.threads_per_rank)
    identity = claim_output_dir(cfg, out, rank)
    resume_dir = choose_checkpoint(cfg, out, world, inputs.ds_config, identity)
    stage_note = single_rank_stage(inputs.ds_config, world, resume_dir, cfg.deepspeed.partition_single_rank)
    if stage_note:
        print0(stage_note)
    write_resolved_config(cfg, out, rank)
    model, tokenizer, keep_alive = setup_model(cfg, inputs.ds_config, inputs.zero3)
    loader, sampler = setup_data(cfg, inputs.train_raw, model, tokenizer, world, rank)
    engine, scheduler, lr_groups = setup_engine(cfg, model, inputs.ds_config)
    resumed = Resumed(resume(engine, sampler, resume_dir), resume_dir, identity)
    preempted = Preemption()  # from here on SIGTERM/SIGINT end the current phase cleanly (see Preemption)
    result = train(cfg, engine, scheduler, lr_groups, loader, sampler, resumed, preempted, world)
    finish(cfg, inputs, engine, tokenizer, result, preempted, world, rank)
    barrier()
    del keep_alive


# ==== the phases, in the order main() runs them ================================================================


@dataclass
class RunInputs:
    """Everything that can be checked before a process group or a model exists."""

    cfg: RecipeConfig
    train_raw: datasets.Dataset
    eval_raw: datasets.Dataset | None
    metrics: dict[str, MetricSpec]  # task -> its eval metric
    ds_config: dict
    zero3: bool


def load_inputs(argv: list[str] | None) -> RunInputs:
    """Config, DeepSpeed JSON and raw data, validated: bad input fails fast with one message (exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        task_map = cfg.cgc.task_map
        train_raw = load_examples(cfg.data.train_files, cfg.data.format, cfg.data.task_field)
        check_tasks(train_raw, task_map)
        eval_raw = None
        if cfg.data.eval_files:
            eval_raw = load_examples(cfg.data.eval_files, cfg.data.format, cfg.data.task_field)
            check_tasks(eval_raw, task_map)
        metrics = task_metrics(cfg.cgc.tasks, cfg.eval.default_metric, cfg.eval.metrics)
        check_writable(Path(cfg.output_dir))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        check_step_fits_a_cluster(cfg, task_counts(train_raw), world)
        ds_config = deepspeed_config(cfg, world)
        facts = MachineFacts.detect(need_ops="offload_optimizer" in ds_config["zero_optimization"])
        refused = unsupported_combinations(cfg.model.quantization, cfg.model.dtype, ds_config, facts)
        if refused:
            raise ConfigError("unsupported on this machine:\n  - " + "\n  - ".join(refused))
    except (ConfigError, DataError) as err:
        error_exit(str(err))
    warn_empty_targets(train_raw)
    zero3 = ds_config["zero_optimization"].get("stage", 0) == 3
    return RunInputs(cfg, train_raw, eval_raw, metrics, ds_config, zero3)


def start_process_group(ds_config: dict, threads: int | None) -> tuple[int, int]:
    """This rank's GPU selected first, then nccl on GPUs or gloo on CPU ranks (cgc.distributed); plain
    `python recipes/finetune.py` is a run of world size 1. DeepSpeed builds some ops on first use (inside
    init_distributed on CPU ranks): a stale build lock stops the run here instead of hanging it. CPU threads are
    set first (cgc.distributed.threads_per_rank). -> (rank, world)"""
    extensions = deepspeed_ops.use_environment_extensions_dir()
    ops = deepspeed_ops.ops_for(ds_config, torch.cuda.is_available())
    stale = deepspeed_ops.stale_locks(extensions, ops)
    if stale:
        error_exit(deepspeed_ops.stale_lock_message(stale))
    if distributed.rank() == 0:
        deepspeed_ops.announce_builds(extensions, ops)
    threads = distributed.threads_per_rank(threads, torch.cuda.is_available())
    if threads is not None:
        torch.set_num_threads(threads)
    import deepspeed  # a slow import: only once the config is known to be good

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    return distributed.start_process_group(lambda backend: deepspeed.init_distributed(dist_backend=backend))


def claim_output_dir(cfg: RecipeConfig, out: Path, rank: int) -> dict:
    """output_dir belongs to this run: one holding another run is refused with resume=none (or moved aside with
    overwrite=true, by rank 0); this run's identity is written to output_dir/cgc_run.json. -> the identity."""
    if cfg.resume == "none" and run_identity.holds_a_run(out):
        if not cfg.overwrite:
            error_exit(run_identity.refusal_to_overwrite(out))
        if rank == 0:
            print0(f"overwrite=true: moved the previous run aside to {run_identity.move_aside(out)}")
        barrier()
    identity = run_identity.fingerprint(cfg)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / run_identity.IDENTITY_FILE).write_text(json.dumps(identity, indent=1) + "\n")
    return identity


def choose_checkpoint(cfg: RecipeConfig, out: Path, world: int, ds_config: dict, identity: dict) -> Path | None:
    """The checkpoint to resume from, checked before any model loads: complete, saved by this many ranks (or
    universal), and of the same shapes and task placement (safe changes are printed). None: start fresh."""
    try:
        resume_dir = ckpt.prepare_resume(cfg.resume, out / "checkpoints", world, ds_config)
        if resume_dir is not None:
            for change in run_identity.check_resume(resume_dir, identity):
                print0(f"resuming with a changed setting (allowed): {change}")
    except ValueError as err:
        error_exit(str(err))
    if resume_dir is None and cfg.resume == "latest":
        print0(f"resume=latest: no complete checkpoint in {out / 'checkpoints'}; starting at step 0")
    return resume_dir


def write_resolved_config(cfg: RecipeConfig, out: Path, rank: int) -> None:
    """The config as this run uses it (YAML + overrides + defaults): printed, and kept as output_dir/config.yaml."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    print0(f"resolved config:\n{text}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(text)


def setup_model(cfg: RecipeConfig, ds_config: dict, zero3: bool):
    """-> (CGCModel, tokenizer, a HfDeepSpeedConfig or None that must stay alive while the model is in use)."""
    from transformers.integrations import HfDeepSpeedConfig

    from cgc.base_model import load_recipe_model

    torch.manual_seed(cfg.seed)
    # Unquantized under ZeRO-3: shard while loading (zero.Init). bitsandbytes models load in full on every rank
    # and are sharded by deepspeed.initialize.
    keep_alive = HfDeepSpeedConfig(ds_config) if zero3 and cfg.model.quantization == "none" else None
    m = cfg.model
    base, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, m.quantization, m.dtype, seed=cfg.seed)
    try:
        model = cgc.attach(base, cfg.cgc)
    except ValueError as err:  # e.g. target_modules matching nothing: a config problem, not a crash
        error_exit(f"cgc: {err}")
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    counts = f"{len(cfg.cgc.clusters)} clusters, {len(model.tasks)} tasks"
    print0(f"CGC-LoRA on {m.name_or_path}: {counts}, {model.num_trainable_parameters():,} trainable")
    return model, tokenizer, keep_alive


def setup_data(cfg: RecipeConfig, train_raw, model: cgc.CGCModel, tokenizer, world: int, rank: int):
    """Tokenised once (rank 0 fills the `datasets` cache first), one cluster per micro-step on all ranks.
    -> (DataLoader, its ClusterAwareBatchSampler)."""
    with rank0_first():
        train_set, report = tokenize_dataset(
            train_raw, tokenizer, model.task_map, cfg.data.max_length, system_prompt=cfg.data.system_prompt
        )
    print0("\n".join(report.lines()))
    lost = sorted(t for t, n in report.examples.items() if report.dropped.get(t, 0) == n)
    if lost:
        print0(
            f"warning: data.max_length={cfg.data.max_length} drops every example of tasks {lost} (their targets "
            "alone do not fit): they are not trained",
            file=sys.stderr,
        )
    try:
        sampler = ClusterAwareBatchSampler(
            train_set["task_id"],
            model.task_map,
            cfg.train.micro_batch_size,
            world_size=world,
            rank=rank,
            seed=cfg.seed,
            mixing=cfg.sampler.mixing,
            temperature=cfg.sampler.temperature,
            cluster_per=cfg.sampler.cluster_per,
            grad_accum=cfg.train.grad_accum,
            lengths=[len(ids) for ids in train_set["input_ids"]] if cfg.sampler.group_by_length else None,
        )
    except ValueError as err:  # e.g. max_length dropped so many examples that no cluster fills a step
        error_exit(f"after tokenisation (data.max_length={cfg.data.max_length}): {err}")
    # num_workers=0: the sampler's position is then exactly what training consumed (the checkpoint stores it),
    # and its `batch_cluster` is the cluster of the batch the loader just returned.
    # A generator of its own: a new loader iterator otherwise draws its seed from torch's global generator, which
    # would shift the dropout masks of a resumed run against the uninterrupted one.
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=MultiTaskCollator(tokenizer.pad_token_id, padding_side="left"),  # targets at the ends of rows
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return loader, sampler


def setup_engine(cfg: RecipeConfig, model: cgc.CGCModel, ds_config: dict):
    """Experts and gates at their own learning rates, the schedule, the DeepSpeed engine.
    -> (engine, scheduler, the name of each param group in the scheduler's order)."""
    import deepspeed
    from transformers import get_scheduler

    groups = model.optimizer_groups(cfg.train.lr, cfg.train.gate_lr, cfg.train.weight_decay)
    if "offload_optimizer" in ds_config["zero_optimization"]:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups)
    else:
        # fused: one pass over each flat ZeRO partition instead of ~10 elementwise ones. ZeRO updates every
        # cluster's experts each step (absent ones by momentum), 3x a plain LoRA's parameters in the demo:
        # the default kernel took a quarter of a CPU step (benchmarks/recipe_speed.py phase_seconds).
        optimizer = torch.optim.AdamW(groups, fused=True)
    schedule = "constant_with_warmup" if cfg.train.schedule == "constant" else cfg.train.schedule
    scheduler = get_scheduler(
        schedule, optimizer, num_warmup_steps=cfg.train.warmup_steps, num_training_steps=cfg.train.max_steps
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, scheduler, [g["name"] for g in groups]


def resume(engine, sampler: ClusterAwareBatchSampler, resume_dir: Path | None) -> int:
    """-> the step to start from: 0, or the resumed checkpoint's."""
    if resume_dir is None:
        return 0
    step, message = ckpt.load(engine, sampler, resume_dir)
    print0(message)
    return step


@dataclass
class TrainResult:
    step: int  # optimizer steps done, resumed ones included
    finished: bool  # max_steps reached (not stopped by a signal or stop_after)
    final_loss: float
    tokens: float  # real tokens of this invocation's steps, over all ranks
    padded_tokens: float  # every position the model ran on in those steps, padding included
    phases: PhaseTimes  # this rank's seconds per phase of the training steps (no load, eval)


@dataclass
class Resumed:
    step: int  # the step training starts from (0 for a fresh run)
    checkpoint: Path | None  # the checkpoint it resumed from, which keep_last never deletes
    identity: dict  # this run's fingerprint, stored with every checkpoint it saves


def train(cfg, engine, scheduler, lr_groups, loader, sampler, resumed: Resumed, preempted: Preemption, world: int):
    """Optimizer steps until max_steps (or stop_after, or a signal), checkpointing as configured. -> TrainResult"""
    model: cgc.CGCModel = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    out, rank, step = Path(cfg.output_dir), distributed.rank(), resumed.step

    def save(step: int) -> Path:
        return ckpt.save(
            engine,
            sampler,
            out / "checkpoints",
            step,
            world,
            cfg.train.keep_last,
            keep=resumed.checkpoint,
            identity=resumed.identity,
        )

    log = RunLog(out, cfg.cgc.num_shared_experts, rank, resume_from=step)
    progress = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", disable=rank != 0)
    micro_batches = endless(loader)
    stop_at = min(cfg.train.max_steps, step + cfg.train.stop_after) if cfg.train.stop_after else cfg.train.max_steps
    engine.train()
    last_saved, tokens, padded, final_loss = step, 0.0, 0.0, log.last_loss
    phases = PhaseTimes()  # where this rank's time goes, summed over the run
    logits_to_keep = takes_logits_to_keep(model)
    while step < stop_at:
        phases.start()
        stats = StepStats(model.task_map)
        micro_steps = []  # (batch, its cluster): the whole step's data first, to count its target tokens
        for _ in range(cfg.train.grad_accum):
            batch = {k: v.to(engine.device) for k, v in next(micro_batches).items()}
            micro_steps.append((batch, sampler.batch_cluster))  # the same cluster on every rank
        step_targets = all_reduce_sum([sum(float(target_tokens(b["labels"]).sum()) for b, _ in micro_steps)])[0]
        # DeepSpeed divides each backward by grad_accum and averages gradients over ranks: scaling by
        # world * grad_accum / step_targets makes the step's gradient that of the mean over all its target tokens,
        # whatever the split over ranks and micro-batches (a per-batch mean would weight short targets more).
        scale = world * cfg.train.grad_accum / max(step_targets, 1.0)
        phases.mark("data")
        for batch, cluster in micro_steps:
            logits, labels = forward_on_targets(engine, batch, logits_to_keep)
            loss_sum, per_sample, per_sample_tokens = token_loss(logits, labels)
            phases.mark("forward")
            engine.backward(loss_sum * scale)
            phases.mark("backward")
            engine.step()
            phases.mark("optimizer")
            stats.add(
                cluster=cluster,
                tokens=float(batch["attention_mask"].sum()),
                padded_tokens=float(batch["attention_mask"].numel()),
                task_ids=batch["task_ids"],
                per_sample_loss=per_sample,
                per_sample_tokens=per_sample_tokens,
            )
            phases.mark("stats")
        grad_norm = optional_float(engine.get_global_grad_norm())
        if zero3:
            clear_zero3_gradient_partitions(engine)
        phases.mark("optimizer")
        step += 1
        total = stats.reduce()
        final_loss = total.loss
        if not math.isfinite(final_loss):
            error_exit(
                f"loss is {final_loss} at step {step}; this rank's batch held tasks {stats.tasks_seen()}", code=3
            )
        tokens += total.tokens
        padded += total.padded_tokens
        phases.mark("stats")
        if step % cfg.train.log_every == 0 or step == stop_at:
            lrs = dict(zip(lr_groups, scheduler.get_last_lr(), strict=True))
            record = {
                "step": step,
                "loss": final_loss,
                "lr": lrs["experts"],
                "lr_groups": lrs,
                "tokens_per_s": total.tokens / phases.step_seconds(),
                "padding_fraction": total.padding_fraction,
                "cluster": total.clusters[0] if len(set(total.clusters)) == 1 else total.clusters,
                "task_losses": total.task_losses(),
                "cluster_losses": total.cluster_losses(),
                "grad_norm": grad_norm,
            }
            with gathered((p for n, p in model.trainable_parameters() if n.endswith("gate_logits")), zero3):
                gates_now = {t: mean_gate(model, t) for t in model.tasks}
            log.write(record, gates_now)
            progress.set_postfix(loss=f"{final_loss:.4f}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
        progress.update()
        phases.mark("log")
        stopping = any_rank(preempted.requested)
        phases.mark("stats")
        if stopping or step == stop_at or (cfg.train.save_every and step % cfg.train.save_every == 0):
            saved = save(step)
            last_saved = step
        phases.mark("checkpoint")
        if stopping:
            print0(f"\nstopped by {preempted.name} at step {step}; checkpoint: {saved}")
            break
    progress.close()
    if last_saved != step:
        save(step)
    log.close()
    return TrainResult(step, step >= cfg.train.max_steps, final_loss, tokens, padded, phases)


def finish(cfg: RecipeConfig, inputs: RunInputs, engine, tokenizer, result: TrainResult, preempted, world, rank):
    """A finished run: per-task eval (eval.json/md, predictions) and adapters/. Every run: run_summary.json.

    A signal during eval stops it at the next batch (eval can be long; its outputs are not written) and the
    adapters are still exported (seconds); a signal during export lets it finish. The final checkpoint is already
    saved either way: `resume=latest` trains nothing more and redoes eval and export."""
    model: cgc.CGCModel = engine.module
    out, zero3 = Path(cfg.output_dir), inputs.zero3
    eval_status = "not run"
    if result.finished and inputs.eval_raw is not None and cfg.eval.max_examples_per_task:
        examples = pick_examples(inputs.eval_raw, cfg.eval.max_examples_per_task, model.tasks)
        e = cfg.eval
        # generate() bypasses the engine's forward, so ZeRO-3's per-step reset never runs during eval: start it
        # from every parameter released, the same state on every rank.
        engine.empty_partition_cache()
        answers = generate_answers(
            model,
            tokenizer,
            examples,
            e.batch_size,
            e.max_new_tokens,
            cfg.data.system_prompt,
            zero3,
            should_stop=lambda: any_rank(preempted.requested),  # the same answer on every rank: one collective
        )
    else:
        answers = None
    if answers is None and result.finished and preempted.requested:
        eval_status = "interrupted"
        print0(
            f"\nstopped by {preempted.name} during eval: no eval written; exporting the adapters. The final "
            f"checkpoint is saved: resume=latest (same output_dir) redoes eval and export without training",
            file=sys.stderr,
        )
    elif answers is not None:
        eval_status = "done"
        results = score_tasks(examples, answers, inputs.metrics, model.task_map)
        untrained = sorted(set(results["tasks"]) - set(task_counts(inputs.train_raw)))
        if untrained:  # only then: eval.json stays what recipes/evaluate.py writes for the same adapter
            results["untrained_tasks"] = untrained
            print0(f"warning: scored tasks without training data: {untrained}", file=sys.stderr)
        if rank == 0:
            write_results(out, results, examples, answers)
            print0(f"\nper-task scores (greedy, held-out examples; {out / 'eval.md'}):\n{markdown_table(results)}")
    if result.finished:
        with gathered((p for _, p in model.trainable_parameters()), zero3):
            if rank == 0:
                model.save_adapter(out / "adapters" / "cgc")
                write_gates(model, cfg.cgc.num_shared_experts, out / "gates.json")
                for task in model.tasks:
                    cgc.export_peft_adapter(model, task, out / "adapters" / "peft" / task)
        if eval_status != "interrupted" and any_rank(preempted.requested):
            print0(f"\n{preempted.name} received after training: eval and export finished first", file=sys.stderr)
    base_bytes_total, base_bytes_rank = base_param_bytes(model)
    summary = {
        "world_size": world,
        "zero_stage": inputs.ds_config["zero_optimization"].get("stage", 0),
        "quantization": cfg.model.quantization,
        "steps": result.step,
        "finished": result.finished,
        "eval": eval_status,  # done, interrupted (by a signal; resume=latest redoes it) or not run
        "final_loss": result.final_loss,
        "trainable_params": model.num_trainable_parameters(),
        "base_param_bytes_total": base_bytes_total,
        "base_param_bytes_per_rank": max_over_ranks(base_bytes_rank),
        "peak_rss_mb": max_over_ranks(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "tokens_per_s": result.tokens / max(result.phases.training_seconds(), 1e-9),  # steps only: no load, saves, eval
        "padding_fraction": 1.0 - result.tokens / result.padded_tokens if result.padded_tokens else 0.0,
        "phase_seconds": result.phases.seconds,  # rank 0's; a step's collectives are inside backward/optimizer
    }
    if rank == 0:
        (out / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print0(f"\nrun summary: {out / 'run_summary.json'}\nTensorBoard: tensorboard --logdir {out / 'tensorboard'}")
        if result.finished:
            print0(f"adapters: {out / 'adapters' / 'cgc'} (cgc), {out / 'adapters' / 'peft'} (one PEFT LoRA per task)")


# ==== helpers of the phases ====================================================================================


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


def optional_float(value) -> float | None:
    return None if value is None else float(value)


def write_gates(model: cgc.CGCModel, num_shared: int, path: Path) -> None:
    """gates.json: per task and adapted layer, the gate weights g_t (its cluster's shared experts, then its own):
    what the gates learned, for the comparison report's heatmap."""
    tasks = {t: {name: g.tolist() for name, g in model.gate(t).items()} for t in model.tasks}
    path.write_text(json.dumps({"num_shared_experts": num_shared, "tasks": tasks}) + "\n")


def mean_gate(model: cgc.CGCModel, task: str) -> list[float]:
    gates = list(model.gate(task).values())
    return torch.stack(gates).mean(dim=0).tolist()


class Preemption:
    """SIGTERM/SIGINT set a flag, which the ranks compare at safe points (one collective): training checkpoints at
    the next step boundary and exits 0; eval stops at the next batch; export finishes."""

    def __init__(self):
        self.requested, self.signal_name = False, None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested, self.signal_name = True, signal.Signals(signum).name

    @property
    def name(self) -> str:
        """The signal's name, on a rank that may not have received it itself."""
        return self.signal_name or "a signal (on another rank)"


if __name__ == "__main__":
    sys.exit(main())
