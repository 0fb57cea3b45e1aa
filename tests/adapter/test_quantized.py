"""bitsandbytes bases (NF4 Linear4bit, int8 Linear8bitLt) on CPU."""

import bitsandbytes as bnb
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

import cgc
from tests.conftest import batch, make_config, randomize_adapter, tiny_llama

QUANTIZATIONS = {
    "nf4": (
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
        bnb.nn.Linear4bit,
    ),
    "int8": (BitsAndBytesConfig(load_in_8bit=True), bnb.nn.Linear8bitLt),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(path)
    return path


def load_quantized(path, kind):
    config, layer_type = QUANTIZATIONS[kind]
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, dtype=torch.float32)
    assert isinstance(model.model.layers[0].self_attn.q_proj, layer_type)
    return model


@pytest.mark.parametrize("kind", sorted(QUANTIZATIONS))
def test_quantized_base_trains_and_stays_frozen(tiny_dir, kind):
    model = cgc.attach(load_quantized(tiny_dir, kind), make_config())
    frozen_before = {n: p.detach().clone() for n, p in model.base_model.named_parameters() if "experts" not in n}
    model.train()
    optimizer = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-2)
    x = batch(batch_size=8, length=12)
    tasks = ["add"] * 4 + ["synonym"] * 4
    losses = []
    for _ in range(20):
        loss = model(input_ids=x, labels=x, task_ids=tasks).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    for name, param in model.base_model.named_parameters():
        if "experts" not in name:
            assert torch.equal(param, frozen_before[name]), name


def test_nf4_export_matches_peft_on_the_same_nf4_base(tiny_dir, tmp_path):
    # Both models run in train mode (all dropouts are 0): in eval mode under no_grad, bitsandbytes repacks NF4
    # weights into a bf16 CPU format on AVX512-bf16 machines, a different kernel on some CPUs only.
    model = cgc.attach(load_quantized(tiny_dir, "nf4"), make_config()).train()
    randomize_adapter(model)
    x = batch()
    with torch.no_grad():
        expected = model(input_ids=x, task_ids=["mul"] * len(x)).logits
    cgc.export_peft_adapter(model, "mul", tmp_path)
    peft_model = PeftModel.from_pretrained(load_quantized(tiny_dir, "nf4"), tmp_path).train()
    with torch.no_grad():
        got = peft_model(input_ids=x).logits
    assert (got - expected).abs().max() <= 1e-4


def test_merge_into_a_quantized_base_is_refused(tiny_dir):
    model = cgc.attach(load_quantized(tiny_dir, "nf4"), make_config())
    with pytest.raises(ValueError, match="merge_task needs an unquantized base.*Linear4bit"):
        cgc.merge_task(model, "add")


def test_the_packaged_gguf_base_loads_in_nf4_for_recipes_and_saves_as_a_plain_model(tmp_path):
    # transformers refuses a quantization config while reading GGUF; the recipe loader de-quantizes first.
    from cgc.models.base_model import load_recipe_model

    float_model, tokenizer = load_recipe_model("smollm2-135m-instruct", None, "none", "float32")
    float_model.save_pretrained(tmp_path)  # e.g. a merged per-task model; refused while marked as GGUF-quantized
    assert "quantization_config" not in (tmp_path / "config.json").read_text()
    nf4_model, _ = load_recipe_model("smollm2-135m-instruct", None, "nf4", "float32")
    assert isinstance(nf4_model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert nf4_model.lm_head.weight.data_ptr() == nf4_model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = tokenizer("The capital of France is", return_tensors="pt")
    float_model.train(), nf4_model.train()  # (bnb's CPU inference path repacks NF4 weights; train mode does not)
    with torch.no_grad():
        a, b = float_model(**ids).logits[0, -1], nf4_model(**ids).logits[0, -1]
    correlation = torch.corrcoef(torch.stack([a, b]))[0, 1]
    print(f"float vs NF4 next-token logits: correlation {correlation:.3f}")
    assert correlation > 0.8  # 4-bit rounding of the same model (an unrelated model: about 0)
    assert a.argmax() == b.argmax()
