"""The seesaw report: shared LoRA, per-task LoRA, MOELoRA and CGC-LoRA trained and evaluated on the same data,
for the same steps, at a matched trainable-parameter budget (DESIGN §1; `cgc.presets.matched_budget`), each
at the learning rate its own validation grid picked, over several seeds.

    make seesaw   # the demo's instruction variant, 3 seeds, the default grid (the command is in the Makefile)
    python recipes/compare.py --config recipes/configs/tiny_cpu.yaml --seeds 2 --lr_grid 1e-3,3e-3 train.max_steps=8

1. Data: a validation split is carved from the training files (per task, seeded; disjoint from training and
   from the eval files by example) unless --validation_files gives one. Written under <out>/data/.
2. Learning rate: per method, a short run (--grid_steps) for each lr of --lr_grid, scored on the validation
   split; the best mean score picks the method's lr. The gates' lr keeps the config's gate_lr / lr ratio unless
   --gate_lr fixes it. The eval files are never looked at here.
3. Final runs: per method and seed (config seed, +1, ...), train.max_steps steps at the chosen lr, scored on
   the eval files (--eval_examples per task where the data has them).
4. Report: mean ± std over seeds, deltas vs per-task LoRA, a paired bootstrap 95 % interval of CGC-LoRA − the
   best other method over eval examples × seeds, the gates' own-vs-shared split: report.json, report.md,
   seesaw.png, gates.png.

Every run is one run of recipes/finetune.py under --out (default <output_dir>/compare): grid/<method>/lr_<lr>/
and <method>/seed_<seed>/. Run the same command again after an interruption: finished runs are kept, an
interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

import cgc
from cgc import gate_report
from cgc.base_model import load_recipe_model
from cgc.data import DataError, check_tasks, load_examples
from cgc.distributed import error_exit, free_port
from cgc.metrics import example_scores, task_metrics
from cgc.presets import matched_budget, smallest_budget, total_rank
from cgc.recipe_config import ConfigError, RecipeConfig, load_recipe_config
from cgc.report import LABELS, OURS, best_baseline, build_report, inputs_note, verdict, write_report
from cgc.stats import paired_bootstrap
from cgc.validation_split import carve_validation, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
# Keys that change how a run is carried out, not what it computes: a re-run may change them (e.g. drop stop_after).
HOW_IT_RUNS = {"train.stop_after", "train.save_every", "train.keep_last", "train.log_every", "train.threads_per_rank",
               "eval.batch_size", "resume", "overwrite"}  # fmt: skip
FINETUNE = ROOT / "recipes" / "finetune.py"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    # ---- config, data and the method configs: checked before anything trains ----------------------------
    try:
        cfg = load_recipe_config(args.config, args.overrides)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in methods if m not in LABELS]
        if unknown or not methods:
            raise ConfigError(f"--methods: unknown {unknown}; choose from {list(LABELS)}")
        grid = parse_grid(args.lr_grid)
        if args.seeds < 1 or args.eval_examples < 1 or args.validation_per_task < 1 or args.min_rank < 1:
            raise ConfigError("--seeds, --eval_examples, --validation_per_task and --min_rank must be >= 1")
        if not cfg.data.eval_files:
            raise ConfigError("the report needs held-out examples: set data.eval_files")
        task_map = cfg.cgc.task_map
        d = cfg.data
        evaluation = checked_rows(d.eval_files, d.format, d.task_field, task_map)
        train = checked_rows(d.train_files, d.format, d.task_field, task_map)
        carve = not args.validation_files and len(grid) > 1  # one lr: nothing to choose, nothing to carve
        if args.validation_files:
            validation = checked_rows(args.validation_files.split(","), d.format, d.task_field, task_map)
            refuse_overlap(validation, evaluation, train)
        elif carve:
            train, validation = carve_validation(train, evaluation, args.validation_per_task, cfg.seed)
        else:
            validation = []  # one lr: nothing to choose, so every training example trains
        missing = sorted(set(task_map.tasks) - {row["task"] for row in train})
        if missing:
            raise DataError(f"no training examples left for {missing} once the validation split is taken out")
        task_metrics(task_map.tasks, cfg.eval.default_metric, cfg.eval.metrics)
        base = cfg.cgc
        asked = args.budget_rank or total_rank(base)
        shape = (base.num_shared_experts, base.num_task_experts, args.moe_experts)
        budget = max(asked, smallest_budget(base.clusters, *shape, args.min_rank))
        presets = matched_budget(
            base.clusters, asked, *shape, args.min_rank, target_modules=base.target_modules, dropout=base.dropout
        )
    except (ConfigError, DataError, ValueError) as err:
        error_exit(str(err))
    out = Path(args.out or Path(cfg.output_dir) / "compare")
    check_split_record(out / "data" / "split.json", split_record(cfg, args, carve))
    without = sorted(set(task_map.tasks) - {row["task"] for row in validation})
    if without and len(grid) > 1:
        print(f"warning: no validation examples for {without}: they take no part in the lr choice", file=sys.stderr)
    files = {
        "train": write_rows(out / "data" / "train.jsonl", train),
        "validation": write_rows(out / "data" / "validation.jsonl", validation),
        "eval": write_rows(out / "data" / "eval.jsonl", evaluation),
    }
    gate_ratio = cfg.train.gate_lr / cfg.train.lr

    # ---- the budget each method got, before spending time on training -----------------------------------
    shapes = {m: method_shape(presets[m]) for m in methods}
    params = trainable_counts(cfg, {m: presets[m] for m in methods})
    raised = f" (raised from {asked}: no expert gets a rank below {args.min_rank})" if budget > asked else ""
    print(f"matched budget: {budget} total expert rank per adapted layer{raised}")
    print(f"  {'method':<16}{'r':>5}{'experts':>9}{'total rank':>12}{'trainable params':>19}")
    for m in methods:
        s = shapes[m]
        print(f"  {LABELS[m]:<16}{s['r']:>5}{s['experts_per_layer']:>9}{s['total_rank']:>12}{params[m]:>19,}")
    sizes = f"{len(train)} training, {len(validation)} validation, {len(evaluation)} eval examples"
    print(f"data: {sizes} ({out / 'data'})")

    # ---- 1. the learning rate of each method, from its validation score --------------------------------
    grid_steps = args.grid_steps or max(1, cfg.train.max_steps // 2)
    total = len(methods) * ((len(grid) if len(grid) > 1 else 0) + args.seeds)
    counter = iter(range(1, total + 1))
    chosen: dict[str, dict] = {}
    for m in methods:
        scores = {}
        for lr in grid if len(grid) > 1 else []:
            run_dir = out / "grid" / m / f"lr_{lr:g}"
            settings = run_settings(args, lr, gate_ratio, cfg.seed, grid_steps, files["validation"], len(validation))
            label = f"[{next(counter)}/{total}] {LABELS[m]}, grid lr {lr:g}"
            result = train_and_score(args, cfg, presets[m], run_dir, files["train"], settings, label)
            scores[f"{lr:g}"] = result["mean"]
        lr = grid[int(np.argmax(list(scores.values())))] if scores else grid[0]
        chosen[m] = {"lr": lr, "gate_lr": args.gate_lr or lr * gate_ratio, **({"grid": scores} if scores else {})}
        if scores:
            print(f"{LABELS[m]}: validation scores {scores} -> lr {lr:g}", flush=True)

    # ---- 2. the final runs: every method at its lr, every seed, scored on the eval files ----------------
    seeds = [cfg.seed + i for i in range(args.seeds)]
    finals: dict[str, list[Path]] = {}
    for m in methods:
        finals[m] = []
        for seed in seeds:
            run_dir = out / m / f"seed_{seed}"
            lr = chosen[m]["lr"]
            settings = run_settings(args, lr, gate_ratio, seed, cfg.train.max_steps, files["eval"], args.eval_examples)
            label = f"[{next(counter)}/{total}] {LABELS[m]}, seed {seed}"
            train_and_score(args, cfg, presets[m], run_dir, files["train"], settings, label)
            finals[m].append(run_dir)

    # ---- 3. the report ----------------------------------------------------------------------------------
    runs = {
        m: {"config": {**shapes[m]}, **chosen[m], "seeds": [read_run(run_dir) for run_dir in finals[m]]}
        for m in methods
    }
    setup = {
        "command": " ".join(["python recipes/compare.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "model": cfg.model.name_or_path,
        "steps": cfg.train.max_steps,
        "budget_rank": budget,
        "budget_asked": asked,
        "min_rank": args.min_rank,
        "examples_per_task": examples_per_task(finals),
        "seeds": args.seeds,
        "seed_values": seeds,
        "inputs": inputs_note(train + validation, evaluation),
        "tuning": tuning_note(grid, grid_steps, validation, args, gate_ratio, cfg.seed),
    }
    report = build_report(runs, setup)
    metrics = task_metrics(task_map.tasks, cfg.eval.default_metric, cfg.eval.metrics)
    baseline = best_baseline(report["methods"])
    if OURS in methods and baseline is not None:
        (ours, our_order), (theirs, their_order) = (per_example_scores(finals[n], metrics) for n in (OURS, baseline))
        if our_order != their_order:
            error_exit(f"{LABELS[OURS]} and {LABELS[baseline]} were scored on different eval examples")
        interval = paired_bootstrap(ours, theirs)
        report["comparison"] = {"baseline": baseline, "baseline_label": LABELS[baseline], **interval}
        print(verdict(report["comparison"]))
    gate_files = [
        json.loads((d / "gates.json").read_text()) for d in finals.get(OURS, []) if (d / "gates.json").is_file()
    ]
    shares, uniform = gate_report.own_share(gate_files) if gate_files else ({}, 0.0)
    if shares:
        line = gate_report.summary(shares, uniform)
        report["gates"] = {"own_share": shares, "uniform_share": uniform, "summary": line}
    write_report(report, out)
    written = ", ".join(str(out / name) for name in ("report.md", "report.json", "seesaw.png", "gates.png"))
    print(f"\n{(out / 'report.md').read_text()}\nwritten: {written}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", help="report dir (default: <output_dir>/compare)")
    parser.add_argument("--methods", default=",".join(LABELS), help=f"comma-separated subset of {list(LABELS)}")
    parser.add_argument("--budget_rank", type=int, help="total expert rank per layer (default: the config's CGC)")
    parser.add_argument("--min_rank", type=int, default=4, help="no expert below this rank: raises the budget")
    parser.add_argument("--moe_experts", type=int, default=4, help="MOELoRA's number of experts (default 4)")
    parser.add_argument("--seeds", type=int, default=3, help="final runs per method: seed, seed+1, ... (default 3)")
    parser.add_argument("--lr_grid", default="3e-4,1e-3,3e-3", help="learning rates tried per method (one: no grid)")
    parser.add_argument("--grid_steps", type=int, help="steps of each grid run (default: half of train.max_steps)")
    parser.add_argument("--gate_lr", type=float, help="fixed gate lr (default: the config's gate_lr/lr ratio)")
    parser.add_argument("--validation_per_task", type=int, default=32, help="validation examples carved per task")
    parser.add_argument("--validation_files", help="comma-separated validation files instead of a carved split")
    parser.add_argument("--eval_examples", type=int, default=50, help="eval examples per task (where there are)")
    parser.add_argument("--nproc", type=int, default=1, help="ranks per run (deepspeed launcher when > 1)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value (YAML values), applied to every run")
    return parser.parse_args(argv)


def parse_grid(text: str) -> list[float]:
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr_grid: comma-separated learning rates, got {text!r}") from None
    if not grid or min(grid) <= 0:
        raise ConfigError(f"--lr_grid: positive learning rates, got {text!r}")
    return list(dict.fromkeys(grid))  # each lr once, in the order given


def checked_rows(files, format: str, task_field: str | None, task_map) -> list[dict]:
    dataset = load_examples(files, format, task_field)
    check_tasks(dataset, task_map)
    return [{k: row[k] for k in ("task", "input", "target")} for row in dataset]


def refuse_overlap(validation: list[dict], evaluation: list[dict], train: list[dict]) -> None:
    """Tuning on eval examples would be tuning on the test set; on training examples, scoring what was trained."""
    keys = {(r["task"], r["input"]) for r in validation}
    for name, rows in (("eval", evaluation), ("training", train)):
        shared = keys & {(r["task"], r["input"]) for r in rows}
        if shared:
            example = sorted(shared)[0]
            raise DataError(
                f"--validation_files: {len(shared)} examples are also in the {name} files (e.g. task {example[0]!r}, "
                f"input {example[1]!r}); the validation examples must be neither trained on nor evaluated"
            )


def split_record(cfg: RecipeConfig, args, carved: bool) -> dict:
    """What decides the data files under <out>/data: a re-run with other values would mix two splits."""
    d = cfg.data
    return {"train_files": d.train_files, "eval_files": d.eval_files, "format": d.format, "task_field": d.task_field,
            "seed": cfg.seed, "validation_per_task": args.validation_per_task,
            "validation_files": args.validation_files,
            "carved": carved}  # fmt: skip


def check_split_record(path: Path, record: dict) -> None:
    if path.is_file() and json.loads(path.read_text()) != record:
        error_exit(
            f"{path.parent} holds a split made with other data settings ({json.loads(path.read_text())}); its runs "
            "were trained on it: use another --out, or remove that directory to start over"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def write_rows(path: Path, rows: list[dict]) -> Path:
    """The same rows give the same file: a re-run after an interruption trains on what it trained on."""
    write_jsonl(path, rows)
    return path.resolve()


def run_settings(args, lr: float, gate_ratio: float, seed: int, steps: int, eval_file: Path, eval_n: int) -> dict:
    return {"seed": seed, "lr": lr, "gate_lr": args.gate_lr or lr * gate_ratio, "max_steps": steps,
            "eval_file": eval_file, "eval_examples": eval_n}  # fmt: skip


def train_and_score(args, cfg, method: cgc.CGCLoraConfig, run_dir: Path, train_file, settings, label: str) -> dict:
    """One finetune.py run (kept when finished, resumed when interrupted) -> its eval.json. A run made with other
    settings (another grid, steps, eval size ...) is refused, never reused."""
    config_path = write_run_config(cfg, method, run_dir, train_file, settings)
    if is_done(run_dir):
        print(f"\n{label}: done earlier, kept", flush=True)
    else:
        print(f"\n{label}: {settings['max_steps']} steps, lr {settings['lr']:g}, seed {settings['seed']}", flush=True)
        code = run_to_end(launcher(args.nproc) + [str(FINETUNE), "--config", str(config_path)])
        if code != 0 or not is_done(run_dir):
            why = f"failed (exit code {code})" if code else "stopped before the end (interrupted)"
            error_exit(
                f"{run_dir} {why}; its output is above and in {run_dir}. Run the same command again to resume it.",
                code=code or 1,
            )
    return json.loads((run_dir / "eval.json").read_text())


def write_run_config(cfg: RecipeConfig, method: cgc.CGCLoraConfig, run_dir: Path, train_file, settings) -> Path:
    """The base config with this method's `cgc` section, the split files (generic format), the run's seed, lr,
    steps and eval size, its own output dir, and `resume: latest` so that a re-run continues it. Checked by
    loading it back before it is used."""
    raw = cfg.to_dict()
    raw["cgc"] = method.to_dict()
    raw["seed"] = settings["seed"]
    raw["data"].update(
        train_files=[str(train_file)], eval_files=[str(settings["eval_file"])], format="generic", task_field=None
    )
    scale = settings["max_steps"] / cfg.train.max_steps  # a shorter grid run keeps the schedule's shape
    raw["train"].update(
        lr=settings["lr"],
        gate_lr=settings["gate_lr"],
        max_steps=settings["max_steps"],
        warmup_steps=round(cfg.train.warmup_steps * scale),
        save_every=min(cfg.train.save_every, settings["max_steps"]),
    )
    raw["eval"]["max_examples_per_task"] = settings["eval_examples"]
    raw.update(output_dir=str(run_dir.resolve()), resume="latest")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"  # finetune.py rewrites it resolved (defaults filled in): compare resolved
    previous = load_recipe_config(path, []).to_dict() if path.is_file() else None
    draft = run_dir / ".config.next.yaml"
    draft.write_text(yaml.safe_dump(raw, sort_keys=False))
    wanted = load_recipe_config(draft, []).to_dict()
    now, before = flat(wanted), flat(previous or {})
    refused = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k) and k not in HOW_IT_RUNS)
    if previous is not None and refused:
        draft.unlink()
        error_exit(
            f"{run_dir} was made with other settings ({', '.join(refused)} differ): use another --out, or remove "
            "that run to redo it"
        )
    draft.replace(path)
    return path


def flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    items = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            items |= flat(value, f"{prefix}{key}.")
        else:
            items[prefix + key] = json.dumps(value)
    return items


def method_shape(config: cgc.CGCLoraConfig) -> dict:
    return {
        "r": config.r,
        "experts_per_layer": sum(config.num_experts(c) for c in config.clusters),
        "total_rank": total_rank(config),
        "clusters": len(config.clusters),
    }


def trainable_counts(cfg, configs: dict[str, cgc.CGCLoraConfig]) -> dict[str, int]:
    """Trainable parameters of each method, counted on the real base model (float: the counts do not depend on
    quantization). Attaching changes the model it is given, hence a copy per method."""
    m = cfg.model
    base, _ = load_recipe_model(m.name_or_path, m.gguf_file, "none", "float32", seed=cfg.seed)
    return {name: cgc.attach(copy.deepcopy(base), c).num_trainable_parameters() for name, c in configs.items()}


def read_run(run_dir: Path) -> dict:
    return {"eval": json.loads((run_dir / "eval.json").read_text()),
            "summary": json.loads((run_dir / "run_summary.json").read_text())}  # fmt: skip


def per_example_scores(run_dirs: list[Path], metrics: dict) -> tuple[dict[str, np.ndarray], list]:
    """({task: (seeds, examples) scores of each eval answer}, the examples' (task, input) order), from each run's
    eval_predictions.jsonl (the same examples in the same order in every run: checked)."""
    per_seed, order = [], None
    for run_dir in run_dirs:
        rows = [json.loads(line) for line in (run_dir / "eval_predictions.jsonl").read_text().splitlines()]
        keys = [(r["task"], r["input"]) for r in rows]
        if order is not None and keys != order:
            raise RuntimeError(f"{run_dir}: its eval examples differ from the other runs'; cannot pair them")
        order = keys
        scores = {}
        for task in dict.fromkeys(r["task"] for r in rows):
            mine = [r for r in rows if r["task"] == task]
            scores[task] = example_scores(metrics[task], [r["prediction"] for r in mine], [r["target"] for r in mine])
        per_seed.append(scores)
    return {task: np.array([s[task] for s in per_seed]) for task in per_seed[0]}, order


def examples_per_task(finals: dict[str, list[Path]]) -> str:
    """The eval examples each task actually had (fewer than --eval_examples where the data has fewer)."""
    first = json.loads((next(iter(finals.values()))[0] / "eval.json").read_text())["tasks"]
    counts = sorted({r["n"] for r in first.values()})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"


def tuning_note(grid, grid_steps, validation, args, gate_ratio, seed) -> str:
    if len(grid) == 1:
        return f"Learning rate: {grid[0]:g} for every method (no grid)."
    where = "--validation_files" if args.validation_files else "carved from the training files (disjoint by example)"
    gates = f"fixed at {args.gate_lr:g}" if args.gate_lr else f"{gate_ratio:.3g} × the lr"
    return (
        f"Learning rate: per method, the best mean validation score of {grid_steps}-step runs (seed {seed}) at "
        f"each lr of {', '.join(f'{lr:g}' for lr in grid)}; validation: {len(validation)} examples {where}; "
        f"gate lr {gates}; a tie goes to the first lr listed. The eval examples were not used for the choice."
    )


def is_done(run_dir: Path) -> bool:
    summary = run_dir / "run_summary.json"
    return (run_dir / "eval.json").is_file() and summary.is_file() and json.loads(summary.read_text())["finished"]


def run_to_end(command: list[str]) -> int:
    """Run a training child; on Ctrl-C (which reaches the child too) wait while it saves its checkpoint."""
    child = subprocess.Popen(command, cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            print("\ninterrupted: waiting for the run to save a checkpoint ...", file=sys.stderr, flush=True)


def launcher(nproc: int) -> list[str]:
    if nproc <= 1:
        return [sys.executable]  # plain python: a run of world size 1
    deepspeed = Path(sys.executable).parent / "deepspeed"  # the launcher installed beside this Python
    return [str(deepspeed), "--num_gpus", str(nproc), "--master_port", str(free_port())]


if __name__ == "__main__":
    sys.exit(main())
