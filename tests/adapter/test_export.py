"""Per-task export is exact: PEFT loading the exported adapter, and the merged model, match the cgc model."""

import json

import pytest
import torch
from peft import PeftModel

import cgc
from tests.conftest import batch, make_config, randomize_adapter, tiny_llama

TASKS = ["synonym", "antonym", "add", "mul", "sub"]


@pytest.mark.parametrize("task", TASKS)
def test_exported_peft_adapter_reproduces_the_task(cgc_model, base_factory, task, tmp_path):
    x = batch()
    with torch.no_grad():
        expected = cgc_model(input_ids=x, task_ids=[task] * len(x)).logits
    out = cgc.export_peft_adapter(cgc_model, task, tmp_path / task)
    adapter_config = json.loads((tmp_path / task / "adapter_config.json").read_text())
    assert adapter_config["r"] == 3 * 4 and adapter_config["lora_alpha"] == 12  # (S+K)*r, scaling 1
    assert adapter_config["peft_type"] == "LORA"

    peft_model = PeftModel.from_pretrained(base_factory(), out).eval()
    with torch.no_grad():
        got = peft_model(input_ids=x).logits
        base = base_factory()(input_ids=x).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (expected - base).abs().max() > 1e-2  # the adapter really changes the output


@pytest.mark.parametrize("task", ["antonym", "mul"])
def test_merge_task_reproduces_the_task_and_leaves_the_cgc_model_alone(cgc_model, task):
    x = batch()
    with torch.no_grad():
        expected = cgc_model(input_ids=x, task_ids=[task] * len(x)).logits
    merged = cgc.merge_task(cgc_model, task)
    assert not any(isinstance(m, cgc.CGCLinear) for m in merged.modules())
    with torch.no_grad():
        got = merged(input_ids=x).logits
        again = cgc_model(input_ids=x, task_ids=[task] * len(x)).logits
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(again, expected)


def test_exported_tasks_serve_together_with_peft_adapter_names(tmp_path):
    # The exports are ordinary LoRA adapters: PEFT mixed-adapter batches reproduce a cgc mixed-task batch.
    model = cgc.attach(tiny_llama(), make_config())
    randomize_adapter(model)
    for task in TASKS:
        cgc.export_peft_adapter(model, task, tmp_path / task)
    peft_model = PeftModel.from_pretrained(tiny_llama(), tmp_path / TASKS[0], adapter_name=TASKS[0])
    for task in TASKS[1:]:
        peft_model.load_adapter(tmp_path / task, adapter_name=task)
    x = batch()
    with torch.no_grad():
        expected = model(input_ids=x, task_ids=TASKS).logits
        got = peft_model.eval()(input_ids=x, adapter_names=TASKS).logits
    assert (got - expected).abs().max() <= 1e-5


def test_export_of_unknown_task_is_a_value_error(cgc_model, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'division'"):
        cgc.export_peft_adapter(cgc_model, "division", tmp_path)
