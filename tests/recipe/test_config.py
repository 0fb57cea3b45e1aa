"""Recipe configs: every shipped YAML loads, overrides parse as YAML, bad configs list every problem."""

import pytest
import yaml

from cgc.adapter.config import CGCLoraConfig
from cgc.recipe.config import ConfigError, load_recipe_config
from cgc.recipe.key_table import key_table, key_table_markdown
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
RUNNABLE_HERE = {"tiny_cpu.yaml", "smollm2_demo.yaml"}  # the others point at models and data of a real cluster


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads_and_opens_with_its_command(path):
    config = load_recipe_config(path, root=ROOT, check_paths=path.name in RUNNABLE_HERE)
    assert isinstance(config.cgc, CGCLoraConfig) and config.cgc.tasks
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and ("recipes/finetune.py" in first or "launch/" in first), first
    assert config.deepspeed.config.startswith("ds_configs/")


def test_overrides_are_parsed_as_yaml():
    config = load_recipe_config(
        ROOT / "recipes/configs/tiny_cpu.yaml",
        [
            "train.max_steps=8",
            "data.train_files=[recipes/data/demo/eval.jsonl,recipes/data/demo/train.jsonl]",
            "train.lr=1e-3",
            "model.quantization=none",
            "cgc.r=2",
            "resume=latest",
        ],
        root=ROOT,
    )
    assert config.train.max_steps == 8 and config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.data.train_files == ["recipes/data/demo/eval.jsonl", "recipes/data/demo/train.jsonl"]
    assert config.model.quantization == "none" and config.cgc.r == 2 and config.resume == "latest"


def test_a_bad_config_lists_every_problem_at_once():
    with pytest.raises(ConfigError) as err:
        load_recipe_config(
            ROOT / "recipes/configs/tiny_cpu.yaml",
            [
                "train.lr=-1",
                "train.max_stepz=3",
                "data.train_files=[nope.jsonl]",
                "model.quantization=fp4",
                "train.micro_batch_size=two",
                "cgc.r=0",
                "cgc.rank=3",
                "deepspeed.config=ds_configs/zero9.json",
            ],
            root=ROOT,
        )
    message = str(err.value)
    for expected in (
        "train.lr must be a finite number > 0, got -1",
        "unknown key train.max_stepz (did you mean train.max_steps?)",
        "data.train_files: file not found: nope.jsonl",
        "model.quantization must be one of",
        "train.micro_batch_size must be an integer, got 'two'",
        "unknown key cgc.rank (did you mean cgc.r_task?)",  # the closest key name
        "deepspeed.config: file not found: ds_configs/zero9.json",
    ):
        assert expected in message, expected
    with pytest.raises(ConfigError, match="r must be an integer >= 1, got 0"):
        load_recipe_config(ROOT / "recipes/configs/tiny_cpu.yaml", ["cgc.r=0"], root=ROOT)


def test_malformed_overrides_and_missing_sections():
    with pytest.raises(ConfigError, match="override 'train.max_steps' is not of the form key.sub=value"):
        load_recipe_config(ROOT / "recipes/configs/tiny_cpu.yaml", ["train.max_steps"], root=ROOT)
    with pytest.raises(ConfigError, match="config file not found"):
        load_recipe_config(ROOT / "recipes/configs/none.yaml", root=ROOT)


def test_eval_metrics_are_checked_against_the_tasks_and_known_metrics():
    tiny = ROOT / "recipes/configs/tiny_cpu.yaml"
    config = load_recipe_config(tiny, ["eval.metrics.add={name: choice_accuracy, choices: ['1', '2']}"], root=ROOT)
    assert config.eval.metrics["add"] == {"name": "choice_accuracy", "choices": ["1", "2"]}
    with pytest.raises(ConfigError, match=r"eval.metrics.add: unknown metric 'bleu'"):
        load_recipe_config(tiny, ["eval.metrics.add=bleu"], root=ROOT)
    with pytest.raises(ConfigError, match=r"eval.metrics names tasks that are in no cluster: \['multiply'\]"):
        load_recipe_config(tiny, ["eval.metrics.multiply=exact_match"], root=ROOT)
    with pytest.raises(ConfigError, match="eval.default_metric: unknown metric 'f1'"):
        load_recipe_config(tiny, ["eval.default_metric=f1"], root=ROOT)


def test_readme_key_table_is_the_one_generated_from_the_config_fields():
    rows = key_table()
    assert all(help_text for _, _, help_text in rows), [key for key, _, h in rows if not h]  # every field documented
    keys = {key for key, _, _ in rows}
    assert {"output_dir", "cgc.clusters", "cgc.r", "train.gate_lr", "eval.metrics", "deepspeed.config"} <= keys
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- recipe keys: python -m cgc keys -->\n")
    end = readme.index("<!-- end recipe keys -->")
    generated = readme[start:end].split("\n", 1)[1]
    assert generated == key_table_markdown(), "README key table is stale: paste `python -m cgc keys`"


def test_cgc_section_problems_join_the_one_config_error():
    with pytest.raises(ConfigError) as err:
        load_recipe_config(
            ROOT / "recipes/configs/tiny_cpu.yaml",
            ["cgc.r=0", "cgc.clusters={a: [x], b: [x]}", "train.lr=-1", "sampler.mixing=zipf", "train.grad_accum=0"],
            root=ROOT,
        )
    message = str(err.value)
    for expected in (
        "cgc: r must be an integer >= 1, got 0",
        "cgc: task 'x' appears in cluster 'a' and again in 'b'",
        "train.lr must be a finite number > 0, got -1",
        "sampler.mixing must be one of",  # the sampler's own argument check, under the config's key names
        "train.grad_accum must be >= 1, got 0",
    ):
        assert expected in message, expected
    assert "invalid CGCLoraConfig" not in message  # merged as problems, not nested as text


def test_yaml_merge_keys_load_and_a_key_given_twice_is_named_with_both_lines(tmp_path):
    from cgc.recipe.yaml_file import read_yaml

    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b\n  x: 1\n  y: 2\nother:\n  <<: *b\n  y: 3\n")
    assert read_yaml(merged) == {"base": {"x": 1, "y": 2}, "other": {"x": 1, "y": 3}}  # an override is no duplicate
    twice = tmp_path / "twice.yaml"
    twice.write_text("a: 1\nb:\n  c: 1\n  c: 2\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:4:3: not valid YAML: key 'c' is given twice \(first on line 3"):
        read_yaml(twice)


def test_a_config_written_out_and_read_back_is_the_same_run(tmp_path):
    """compare.py keeps a finished child run only if its config read back equals the one it would write now: a
    default whose type the loader changes (1800 read back as 1800.0) would make every old run look different."""
    from cgc.recipe.child_runs import flat

    config = load_recipe_config("recipes/configs/tiny_cpu.yaml", [])
    (tmp_path / "written.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    read_back = load_recipe_config(tmp_path / "written.yaml", [])
    assert flat(read_back.to_dict()) == flat(config.to_dict())
