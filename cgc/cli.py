"""`python -m cgc <command>` (or `cgc <command>` once installed): cgc's tools that are not recipes.

cgc to-universal CHECKPOINT   a checkpoints/step_N dir -> step_N_universal, resumable on any number of ranks
cgc cluster --model M --data FILE ... [--num-clusters N | --threshold T]
                              propose a task-cluster map from gradient affinity (YAML to paste into a config)
cgc keys                      every recipe config key, its default and its help (the README's table)
cgc map                       the package map (the README's "How it is built")
cgc build-ops                 build the DeepSpeed ops this machine's recipes load (make install runs it)
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

import cgc
from cgc.analysis.clustering import DEFAULT_THRESHOLD


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cgc", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    universal = commands.add_parser("to-universal", help="convert a checkpoint for another number of ranks")
    universal.add_argument("checkpoint", help="a checkpoints/step_N directory")
    add_cluster_arguments(commands.add_parser("cluster", help="propose a task-cluster map from gradient affinity"))
    commands.add_parser("keys", help="the recipe config keys as a Markdown table")
    commands.add_parser("map", help="the package map as a Markdown table")
    commands.add_parser("build-ops", help="build the DeepSpeed ops this machine's recipes load")
    args = parser.parse_args(argv)
    {"to-universal": to_universal, "cluster": cluster, "keys": keys, "map": package_map, "build-ops": build_ops}[
        args.command
    ](args)


def to_universal(args) -> None:
    from cgc.training.checkpoint import to_universal as convert

    try:
        print(convert(Path(args.checkpoint)))
    except ValueError as err:
        sys.exit(f"error: {err}")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub id, local dir, tiny-llama, or smollm2-135m-instruct")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--data", nargs="+", required=True, help="JSONL/JSON/parquet files or dataset dirs")
    parser.add_argument("--format", default="auto")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-clusters", type=int, default=None)
    group.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="merge clusters while their mean gradient cosine is >= this (default %(default)g: only groups that "
        "conflict on average stay apart)",
    )
    parser.add_argument("--examples-per-task", type=int, default=32)
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--target-modules", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)


def cluster(args) -> None:
    """Measure task affinity on `--examples-per-task` examples of each task (cgc.analysis.clustering) and print
    the proposed cluster map as YAML."""
    from cgc.analysis.clustering import cluster_tasks, sample_by_task, to_yaml
    from cgc.data import load_examples
    from cgc.models import load_base_model

    by_task = sample_by_task(load_examples(args.data, format=args.format), args.examples_per_task, args.seed)
    print(f"measuring gradient affinity of {len(by_task)} tasks on {args.model} ...", file=sys.stderr)
    model, tokenizer = load_base_model(args.model, args.gguf_file, seed=args.seed)  # --seed: a tiny model's too
    clusters, affinity = cluster_tasks(
        model,
        tokenizer,
        by_task,
        num_clusters=args.num_clusters,
        threshold=args.threshold,
        target_modules=args.target_modules,
        warmup_steps=args.warmup_steps,
        max_length=args.max_length,
        seed=args.seed,
    )
    print(to_yaml(clusters, affinity))


def keys(args) -> None:
    from cgc.recipe.key_table import key_table_markdown

    print(key_table_markdown(), end="")


def package_map(args) -> None:
    print(package_map_markdown(), end="")


def package_map_markdown() -> str:
    """One row per subpackage of cgc: what its docstring says it holds, and its modules. The README's map is this
    table (a test keeps the two equal), so the map follows the tree."""
    lines = ["| package | what it holds | modules |", "|---|---|---|"]
    for info in pkgutil.iter_modules(cgc.__path__):
        if not info.ispkg:
            continue
        package = importlib.import_module(f"cgc.{info.name}")
        modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
        summary = " ".join(package.__doc__.split("\n\n")[0].split())
        lines.append(f"| `cgc.{info.name}` | {summary} | {', '.join(f'`{m}`' for m in modules)} |")
    return "\n".join(lines) + "\n"


def build_ops(args) -> None:
    from cgc.training.deepspeed_ops import build_for_this_machine

    build_for_this_machine()
