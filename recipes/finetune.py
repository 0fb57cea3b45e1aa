"""CGC-LoRA multi-task fine-tuning on DeepSpeed. One file, read top to bottom.

    deepspeed --num_gpus 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml train.max_steps=8
    torchrun --nproc_per_node 2 recipes/finetune.py --config recipes/configs/tiny_cpu.yaml
    python recipes/finetune.py --config recipes/configs/tiny_cpu.yaml          # one process

`main` runs the phases in order, each a function below it with its inputs and outputs in its signature:
load_inputs (config and raw data, validated before any process group or model exists) -> start_process_group
-> setup_model (base model, optionally 4-bit NF4 / 8-bit, + cgc.attach) -> setup_data (tokenised data and the
cluster-aware sampler) -> setup_engine (optimizer, schedule, deepspeed.initialize) -> resume -> train
(checkpoints; SIGTERM/SIGINT = checkpoint and exit 0) -> finish (per-task eval, adapters/, run_summary.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

import cgc
from cgc.adapter.growth import load_trained
from cgc.data import task_counts, tokenize_dataset
from cgc.evaluation import evaluate_tasks, markdown_table, write_results
from cgc.recipe import RecipeConfig, error_exit
from cgc.recipe.inputs import RunInputs, check_tokenized_tasks, load_run_inputs, single_rank_stage
from cgc.training import checkpoint as ckpt
from cgc.training import deepspeed_ops, distributed, run_identity, stall
from cgc.training.distributed import any_rank, barrier, free_port, gathered, print0, rank0_first
from cgc.training.loader import train_loader
from cgc.training.optimizer import optimizer_and_schedule
from cgc.training.preemption import Preemption, launcher_ancestors
from cgc.training.run_dir import RunDir, RunDirError, write_untrained
from cgc.training.run_log import PhaseTimes, RunLog, mean_gates, write_gates
from cgc.training.run_summary import TrainResult, run_summary
from cgc.training.step import train_step
from cgc.training.target_loss import takes_logits_to_keep


def main(argv: list[str] | None = None) -> None:
    launchers = launcher_ancestors()  # first: a launcher may end while the model loads (cgc.training.preemption)
    inputs = load_inputs(argv)
    cfg, out = inputs.cfg, RunDir(inputs.cfg.output_dir)
    rank, world = start_process_group(inputs.ds_config, cfg.train)
    stall.arm(cfg.train.collective_timeout_s, out.checkpoints)  # a timed-out collective: one message, exit 1
    identity = claim_output_dir(cfg, out, rank)
    resume_dir = choose_checkpoint(cfg, out, world, inputs.ds_config, identity)
    stage_note = single_rank_stage(inputs.ds_config, world, resume_dir, cfg.deepspeed.partition_single_rank)
    if stage_note:
        print0(stage_note)
    write_resolved_config(cfg, out, rank)
    model, tokenizer, keep_alive = setup_model(cfg, inputs.ds_config, inputs.zero3)
    loader, sampler = setup_data(cfg, inputs, model, tokenizer, world, rank)
    engine, scheduler, lr_groups = setup_engine(cfg, model, inputs.ds_config, inputs.trained_clusters)
    resumed = Resumed(ckpt.resume_step(engine, sampler, resume_dir), resume_dir, identity)
    preempted = Preemption(launchers)  # from here on SIGTERM/SIGINT end the current phase cleanly (see Preemption)
    result = train(cfg, engine, scheduler, lr_groups, loader, sampler, resumed, preempted, world)
    finish(cfg, inputs, engine, tokenizer, result, preempted, world, rank, sampler)
    barrier()
    del keep_alive


# ==== the phases, in the order main() runs them ================================================================


def load_inputs(argv: list[str] | None) -> RunInputs:
    """Config, DeepSpeed JSON and raw data, validated: bad input fails fast with one message (exit 2)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values)")
    args = parser.parse_args(argv)
    try:
        return load_run_inputs(args.config, args.overrides)
    except cgc.CGCError as err:
        error_exit(str(err))


def start_process_group(ds_config: dict, train) -> tuple[int, int]:
    """This rank's GPU selected first, then nccl on GPUs or gloo on CPU ranks (cgc.training.distributed), every
    collective with train.collective_timeout_s (cgc.training.stall); plain `python recipes/finetune.py` is a run
    of world size 1. DeepSpeed builds some ops on first use (inside init_distributed on CPU ranks): a stale build
    lock stops the run here instead of hanging it. CPU threads are set first (distributed.threads_per_rank)."""
    try:
        deepspeed_ops.prepare(ds_config, torch.cuda.is_available(), announce=distributed.rank() == 0)
    except deepspeed_ops.StaleBuildLockError as err:
        error_exit(str(err))
    threads = distributed.threads_per_rank(train.threads_per_rank, torch.cuda.is_available())
    if threads is not None:
        torch.set_num_threads(threads)
    import deepspeed  # a slow import: only once the config is known to be good
    import peft  # noqa: F401  (export needs it: a broken install fails here, in seconds, not after training)

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    try:
        init = lambda backend, **timeout: deepspeed.init_distributed(dist_backend=backend, **timeout)  # noqa: E731
        return distributed.start_process_group(init, train.collective_timeout_s)
    except distributed.PortInUseError as err:
        error_exit(str(err))


def claim_output_dir(cfg: RecipeConfig, out: RunDir, rank: int) -> dict:
    """output_dir belongs to this run (another run's is refused, or moved aside with overwrite=true); its identity
    goes to output_dir/cgc_run.json (cgc.training.run_identity). -> the identity."""
    try:
        return run_identity.claim_output_dir(cfg, out.root, rank)
    except RunDirError as err:
        error_exit(str(err))


def choose_checkpoint(cfg: RecipeConfig, out: RunDir, world: int, ds_config: dict, identity: dict) -> Path | None:
    """The checkpoint to resume from, checked before any model loads (cgc.training.checkpoint.choose): complete,
    saved by this many ranks (or universal), of the same shapes and task placement. None: start fresh."""
    try:
        return ckpt.choose(cfg.resume, out.checkpoints, world, ds_config, identity)
    except ValueError as err:
        error_exit(str(err))


def write_resolved_config(cfg: RecipeConfig, out: RunDir, rank: int) -> None:
    """The config as this run uses it (YAML + overrides + defaults): printed, and kept as output_dir/config.yaml."""
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
    print0(f"resolved config:\n{text}")
    if rank == 0:
        out.root.mkdir(parents=True, exist_ok=True)
        out.config.write_text(text)


def setup_model(cfg: RecipeConfig, ds_config: dict, zero3: bool):
    """-> (CGCModel, tokenizer, a HfDeepSpeedConfig or None that must stay alive while the model is in use)."""
    from transformers.integrations import HfDeepSpeedConfig

    from cgc.models import load_recipe_model

    torch.manual_seed(cfg.seed)
    # Unquantized under ZeRO-3: shard while loading (zero.Init). bitsandbytes models load in full on every rank
    # and are sharded by deepspeed.initialize.
    keep_alive = HfDeepSpeedConfig(ds_config) if zero3 and cfg.model.quantization == "none" else None
    m = cfg.model
    base, tokenizer = load_recipe_model(m.name_or_path, m.gguf_file, m.quantization, m.dtype, seed=cfg.seed)
    try:
        model = cgc.attach(base, cfg.cgc)
        if cfg.init_from:  # the trained clusters' experts and gates, frozen; cfg.cgc was grown from them
            load_trained(model, cfg.init_from, cfg.train.extend_shared)
    except ValueError as err:  # e.g. target_modules matching nothing: a config problem, not a crash
        error_exit(f"cgc: {err}")
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.train.compile:
        model.compile()  # the base with its CGC-LoRA layers; routing stays eager (CGCModel.compile)
    counts = f"{len(cfg.cgc.clusters)} clusters, {len(model.tasks)} tasks"
    print0(f"CGC-LoRA on {m.name_or_path}: {counts}, {model.num_trainable_parameters():,} trainable")
    return model, tokenizer, keep_alive


def setup_data(cfg: RecipeConfig, inputs: RunInputs, model: cgc.CGCModel, tokenizer, world: int, rank: int):
    """Tokenised once (rank 0 fills the `datasets` cache first), one cluster per micro-step on all ranks.
    -> (DataLoader, its ClusterAwareBatchSampler)."""
    with rank0_first():
        train_set, report = tokenize_dataset(
            inputs.train_raw, tokenizer, model.task_map, cfg.data.max_length, system_prompt=cfg.data.system_prompt
        )
    print0("\n".join(report.lines()))
    try:  # tasks max_length left without an example: refused, or (allow_untrained) not exported
        inputs.untrained_tasks += check_tokenized_tasks(inputs, report.examples, report.dropped)
    except cgc.CGCError as err:
        error_exit(str(err))
    s, tr = cfg.sampler, cfg.train
    try:
        return train_loader(
            train_set, model.task_map, tokenizer.pad_token_id, tr.micro_batch_size, world, rank, cfg.seed,
            tr.grad_accum, s.mixing, s.temperature, s.cluster_per, s.group_by_length,
        )  # fmt: skip
    except ValueError as err:  # e.g. max_length dropped so many examples that no cluster fills a step
        error_exit(f"after tokenisation (data.max_length={cfg.data.max_length}): {err}")


def setup_engine(cfg: RecipeConfig, model: cgc.CGCModel, ds_config: dict, clusters: list[str]):
    """Experts and gates at their own learning rates (of `clusters`: those with data), the schedule, the engine.
    -> (engine, scheduler, the name of each param group in the scheduler's order)."""
    import deepspeed

    optimizer, scheduler, group_names = optimizer_and_schedule(model, cfg.train, ds_config, clusters)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine, scheduler, group_names


@dataclass
class Resumed:
    step: int  # the step training starts from (0 for a fresh run)
    checkpoint: Path | None  # the checkpoint it resumed from, which keep_last never deletes
    identity: dict  # this run's fingerprint, stored with every checkpoint it saves


def train(cfg, engine, scheduler, lr_groups, loader, sampler, resumed: Resumed, preempted: Preemption, world: int):
    """Optimizer steps until max_steps (or stop_after, or a signal), checkpointing as configured. -> TrainResult"""
    model: cgc.CGCModel = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    out, rank, step = RunDir(cfg.output_dir), distributed.rank(), resumed.step

    def save(step: int) -> Path:
        keep = resumed.checkpoint
        return ckpt.save(
            engine, sampler, out.checkpoints, step, world, cfg.train.keep_last, keep=keep, identity=resumed.identity
        )

    log = RunLog(out.root, cfg.cgc.num_shared_experts, rank, resume_from=step)
    progress = tqdm(total=cfg.train.max_steps, initial=step, desc="train", unit="step", disable=rank != 0)
    micro_batches = itertools.chain.from_iterable(itertools.repeat(loader))  # each pass: one sampler epoch
    stop_at = min(cfg.train.max_steps, step + cfg.train.stop_after) if cfg.train.stop_after else cfg.train.max_steps
    engine.train()
    last_saved, tokens, padded, final_loss = step, 0.0, 0.0, log.last_loss
    phases = PhaseTimes()  # where this rank's time goes, summed over the run
    logits_to_keep, accum, posts = takes_logits_to_keep(model), cfg.train.grad_accum, stall.StepPosts(rank, world)
    while step < stop_at:
        phases.start()
        mine, grad_norm = train_step(engine, micro_batches, sampler, accum, logits_to_keep, phases, world)
        step += 1
        posts.post(step)  # for naming a rank that stops answering (cgc.training.stall)
        total = mine.reduce()
        final_loss = total.loss
        if not math.isfinite(final_loss):
            error_exit(f"loss is {final_loss} at step {step}; this rank's batch held tasks {mine.tasks_seen()}", code=3)
        tokens += total.tokens
        padded += total.padded_tokens
        phases.mark("stats")
        if step % cfg.train.log_every == 0 or step == stop_at:
            lrs = dict(zip(lr_groups, scheduler.get_last_lr(), strict=True))
            record = total.record(step, lrs, grad_norm, phases.step_seconds())
            with gathered((p for n, p in model.trainable_parameters() if n.endswith("gate_logits")), zero3):
                gates = mean_gates(model)
            log.write(record, gates)
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
    posts.close()  # the poster leaves the store before any rank can exit (and rank 0 take the store with it)
    if last_saved != step:
        save(step)
    log.close()
    return TrainResult(step, step >= cfg.train.max_steps, final_loss, tokens, padded, phases)


def finish(
    cfg: RecipeConfig, inputs: RunInputs, engine, tokenizer, result: TrainResult, preempted, world, rank, sampler
):
    """A finished run: per-task eval (eval.json/md, predictions) and adapters/. Every run: run_summary.json.

    A signal during eval stops it at the next batch (eval can be long; its outputs are not written) and the
    adapters are still exported (seconds); a signal during export lets it finish. The final checkpoint is already
    saved either way: `resume=latest` trains nothing more and redoes eval and export."""
    model: cgc.CGCModel = engine.module
    out = RunDir(cfg.output_dir)
    eval_status = "not run"
    if result.finished:
        eval_status = evaluate_run(cfg, inputs, engine, tokenizer, preempted, rank)
        export_run(model, out, inputs.zero3, rank, skip=inputs.untrained_tasks)
        if eval_status != "interrupted" and any_rank(preempted.requested):
            print0(f"\n{preempted.name} received after training: eval and export finished first", file=sys.stderr)
    zero_stage = inputs.ds_config["zero_optimization"].get("stage", 0)
    seen = sampler.examples_per_task(result.step * cfg.train.grad_accum)  # each task's examples over the run
    summary = run_summary(model, result, world, zero_stage, cfg.model.quantization, eval_status, seen)
    if rank == 0:
        out.summary.write_text(json.dumps(summary, indent=2) + "\n")
        print0(f"\nrun summary: {out.summary}\nTensorBoard: tensorboard --logdir {out.tensorboard}")
        if result.finished:
            print0(f"adapters: {out.cgc_adapter} (cgc), {out.peft_adapters} (one PEFT LoRA per task)")


def evaluate_run(cfg: RecipeConfig, inputs: RunInputs, engine, tokenizer, preempted, rank: int) -> str:
    """Greedy answers on the held-out examples, scored per task, written by rank 0.
    -> "done", "interrupted" (a signal stopped it: nothing written) or "not run" (no eval data or examples)."""
    if inputs.eval_raw is None or not cfg.eval.max_examples_per_task:
        return "not run"
    e = cfg.eval
    # generate() bypasses the engine's forward, so ZeRO-3's per-step reset never runs during eval: start it
    # from every parameter released, the same state on every rank.
    engine.empty_partition_cache()
    evaluated = evaluate_tasks(
        engine.module,
        tokenizer,
        inputs.eval_raw,
        inputs.metrics,
        e.max_examples_per_task,
        e.batch_size,
        e.max_new_tokens,
        cfg.data.system_prompt,
        inputs.zero3,
        should_stop=lambda: any_rank(preempted.requested),  # the same answer on every rank: one collective
    )
    if evaluated is None:
        print0(
            f"\nstopped by {preempted.name} during eval: no eval written; exporting the adapters. The final "
            f"checkpoint is saved: resume=latest (same output_dir) redoes eval and export without training",
            file=sys.stderr,
        )
        return "interrupted"
    results, examples, answers = evaluated
    trained = set(task_counts(inputs.train_raw)) - set(inputs.untrained_tasks)  # max_length may drop a task's all
    trained |= set(inputs.growth.trained.tasks if inputs.growth else ())
    if untrained := sorted(set(results["tasks"]) - trained):  # only then: eval.json as evaluate.py writes it
        results["untrained_tasks"] = untrained
        print0(f"warning: scored tasks without training data: {untrained}", file=sys.stderr)
    if rank == 0:
        write_results(cfg.output_dir, results, examples, answers)
        where = RunDir(cfg.output_dir).eval_md
        print0(f"\nper-task scores (greedy, held-out examples; {where}):\n{markdown_table(results)}")
    return "done"


def export_run(model: cgc.CGCModel, out: RunDir, zero3: bool, rank: int, skip: tuple[str, ...] = ()) -> None:
    """adapters/cgc (the cgc adapter, naming the untrained tasks `skip`), gates.json and adapters/peft/<task> (one
    exact PEFT LoRA per trained task)."""
    with gathered((p for _, p in model.trainable_parameters()), zero3):
        if rank == 0:
            model.save_adapter(out.cgc_adapter)
            write_untrained(out.cgc_adapter, skip)  # export.py and serve.py leave them out too
            write_gates(model, out.gates)
            for task in (t for t in model.tasks if t not in skip):
                cgc.export_peft_adapter(model, task, out.peft_adapters / task)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RuntimeError as err:  # a collective that timed out (a rank stopped answering): one message, exit 1
        stall.end_if_stalled(err)
        raise
