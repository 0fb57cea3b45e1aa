"""Write the demo multi-task dataset (generic format) in two variants of the same examples:

    recipes/data/demo/{train,eval}.jsonl                    task hidden from the input
    recipes/data/demo/{instruct_train,instruct_eval}.jsonl  every prompt names its task in words

    python recipes/data/make_demo.py [--train-per-task 300] [--eval-per-task 50] [--seed 0]

Three clusters, nine tasks, every answer scored by exact match. Inside a cluster all tasks take the same kind
of input and want different outputs ("apple river stone" -> reversed, upper-cased or sorted). In the first
variant the prompt holds no instruction: only the task id says which output is wanted, so only methods given
the task id can know it. The instruction variant ("Reverse the order of these words: apple river stone"), like
PromptCBLUE, Firefly or FLAN, tells every method the task: the fair comparison (`make seesaw`). The output is
deterministic for a given seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = (
    "apple river stone cloud green table music horse paper light candle forest silver window garden orange "
    "rabbit bridge winter planet yellow castle dragon mirror pencil summer valley rocket tiger ocean meadow "
    "violin pepper marble falcon lemon harbor copper jungle"
).split()

CLUSTERS = {
    "words": ["reverse_words", "uppercase", "sort_words"],
    "numbers": ["add", "subtract", "maximum"],
    "letters": ["first_letter", "last_letter", "length"],
}


# The instruction variant's prompt: "<instruction>: <input>".
INSTRUCTIONS = {
    "reverse_words": "Reverse the order of these words",
    "uppercase": "Write these words in capital letters",
    "sort_words": "Sort these words alphabetically",
    "add": "Add these two numbers",
    "subtract": "Subtract the second number from the first",
    "maximum": "Give the larger of these two numbers",
    "first_letter": "Give the first letter of this word",
    "last_letter": "Give the last letter of this word",
    "length": "Count the letters of this word",
}


def with_instruction(row: dict) -> dict:
    return {**row, "input": f"{INSTRUCTIONS[row['task']]}: {row['input']}"}


def draw_input(cluster: str, rng: random.Random) -> str:
    if cluster == "words":
        return " ".join(rng.sample(WORDS, 3))
    if cluster == "numbers":
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        return f"{max(a, b)} {min(a, b)}"
    return rng.choice(WORDS)


def answer(task: str, text: str) -> str:
    words = text.split()
    match task:
        case "reverse_words":
            return " ".join(reversed(words))
        case "uppercase":
            return text.upper()
        case "sort_words":
            return " ".join(sorted(words))
        case "add":
            return str(int(words[0]) + int(words[1]))
        case "subtract":
            return str(int(words[0]) - int(words[1]))
        case "maximum":
            return str(max(int(w) for w in words))
        case "first_letter":
            return text[0]
        case "last_letter":
            return text[-1]
        case "length":
            return str(len(text))
    raise ValueError(f"unknown task {task!r}")


def make_split(per_task: int, rng: random.Random, exclude: dict[str, set[str]]) -> list[dict]:
    rows = []
    for cluster, tasks in CLUSTERS.items():
        for task in tasks:
            seen = exclude.setdefault(task, set())
            taken = []
            for _ in range(per_task * 50):  # bounded: small input spaces (single words) repeat
                if len(taken) == per_task:
                    break
                text = draw_input(cluster, rng)
                if text in seen and cluster != "letters":
                    continue
                seen.add(text)
                taken.append({"task": task, "input": text, "target": answer(task, text)})
            rows += taken
    rng.shuffle(rows)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-per-task", type=int, default=300)
    parser.add_argument("--eval-per-task", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "demo"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Eval first, then train excluding eval inputs: held-out inputs are never trained on (except the letters
    # cluster, whose whole input space is the 39-word list).
    used: dict[str, set[str]] = {}
    splits = {"eval": make_split(args.eval_per_task, rng, used), "train": make_split(args.train_per_task, rng, used)}
    for name, rows in splits.items():
        write_jsonl(out / f"{name}.jsonl", rows)
        write_jsonl(out / f"instruct_{name}.jsonl", [with_instruction(row) for row in rows])
    with open(out / "clusters.json", "w") as f:
        json.dump(CLUSTERS, f, indent=2)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    print(f"wrote {len(rows)} examples to {path}")


if __name__ == "__main__":
    main()
