"""Model card, ``push_to_hub`` against a local stand-in for the Hub API, and the QLoRA loading checks (CPU)."""

from __future__ import annotations

import os

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from trl_reasonmaxxer import ReasonMaxxerTrainer
from trl_reasonmaxxer.hub import HubPushError, card_settings, describe_precision
from trl_reasonmaxxer.inputs import check_quantization_supported

from .helpers import LocalHub, alternating_reward, chat_prompts, tiny_config


REPO = "someone/tiny-reasonmaxxer"


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    return LocalHub(tmp_path / "hub").install(monkeypatch)


def trained(model_dir, output_dir, **config):
    args = tiny_config(output_dir, max_steps=1, learning_rate=1e-2, hub_model_id=REPO, **config)
    trainer = ReasonMaxxerTrainer(model_dir, alternating_reward, args=args, train_dataset=chat_prompts(3))
    trainer.train()
    return trainer


def test_push_uploads_a_loadable_adapter_tokenizer_and_card_but_not_the_cache(tiny_model_dir, tmp_path, local_hub):
    out = tmp_path / "out"
    trainer = trained(tiny_model_dir, out, save_strategy="steps", save_steps=1, push_to_hub=True)
    assert (out / "checkpoint-1").is_dir() and (out / "rollouts").is_dir()
    assert local_hub.uploads == 0  # hub_strategy="end": checkpoints (and the cache beside them) are not pushed
    trainer.push_to_hub(dataset_name="svamp")
    assert local_hub.uploads == 1

    repo = local_hub.root / REPO
    uploaded = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    } <= uploaded
    assert not any(name.startswith(("rollouts", "checkpoint-")) for name in uploaded)

    card = (repo / "README.md").read_text()
    for text in (
        "## ReasonMaxxer training",
        "`num_generations` | 4",
        "`fork_fraction` | 0.5",
        "`loss_type` | adv_ce",
        "`beta` | 0.2",
        "`r` | 32",
        "Base model: float32 weights, float32 LM head",
        "### Offline pool",
        f"`pool/pairs` | {trainer.pool_stats['pool/pairs']}",
        "2605.06241",
        "@article{akgul2026reasonmaxxer",
        "- reasonmaxxer",
        "svamp",
    ):
        assert text in card, text
    assert card.index("## ReasonMaxxer training") < card.index("### Framework versions")

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, str(repo)).eval()
    trainer.model.eval()
    ids = torch.tensor([trainer.offline.prompt_ids[0]])
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, trainer.model(input_ids=ids).logits, atol=1e-6)


def test_failed_push_keeps_everything_local_and_says_how_to_retry(tiny_model_dir, tmp_path, local_hub):
    out = tmp_path / "out"
    trainer = trained(tiny_model_dir, out)
    local_hub.fail = True
    with pytest.raises(HubPushError) as info:
        trainer.push_to_hub()
    message = str(info.value)
    assert "Hub unreachable" in message and f"hf upload {REPO} {out} ." in message
    assert "--exclude 'rollouts/*'" in message and "trainer.push_to_hub()" in message
    assert {"adapter_model.safetensors", "tokenizer.json", "README.md"} <= set(os.listdir(out))
    assert "## ReasonMaxxer training" in (out / "README.md").read_text()
    assert local_hub.uploads == 0

    local_hub.fail = False  # the Hub is back: the same call now succeeds
    trainer.push_to_hub()
    assert (local_hub.root / REPO / "adapter_model.safetensors").is_file()


def test_precision_sentence_names_the_quantization():
    assert describe_precision(None, "bfloat16", "bfloat16", "bf16").startswith(
        "Base model: bfloat16 weights, bfloat16 LM head; training mixed precision: bf16."
    )
    qlora = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype="bfloat16"
    ).to_dict()
    text = describe_precision(qlora, "bfloat16", "float32", "bf16")
    expected = "4-bit NF4 weights (bitsandbytes QLoRA, double quantization; compute dtype bfloat16), float32 LM head"
    assert expected in text
    assert "8-bit LLM.int8" in describe_precision(BitsAndBytesConfig(load_in_8bit=True).to_dict(), "f", "f", "none")


def test_card_settings_list_only_the_knobs_the_chosen_gate_and_loss_use(tmp_path):
    args = tiny_config(tmp_path, fork_gate="all", loss_type="fork_dpo", dpo_beta=2.0)
    settings = card_settings(args, None)
    assert settings["Fork gate"] == {"fork_gate": "all", "fork_scope": "pool"}
    assert settings["Loss"]["dpo_beta"] == 2.0 and "epsilon" not in settings["Loss"]
    assert "LoRA" not in settings
    args = tiny_config(tmp_path, fork_scope="rollout", fork_topk=3, loss_type="adv_ratio")
    lora = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": {"v_proj", "q_proj"}}
    settings = card_settings(args, lora)
    assert settings["Fork gate"]["fork_topk"] == 3 and "fork_fraction" not in settings["Fork gate"]
    assert settings["Loss"]["epsilon"] == 0.2
    assert settings["LoRA"]["target_modules"] == "q_proj, v_proj"


@pytest.mark.parametrize(
    ("has_bnb", "has_cuda", "missing"),
    [
        (False, False, "the bitsandbytes package and a CUDA GPU are missing"),
        (True, False, "a CUDA GPU is missing"),
        (False, True, "the bitsandbytes package is missing"),
    ],
)
def test_quantization_check_names_what_is_missing_and_the_fix(has_bnb, has_cuda, missing):
    with pytest.raises(ValueError, match="QLoRA") as info:
        check_quantization_supported(has_bnb, has_cuda)
    assert missing in str(info.value) and "pip install 'trl-reasonmaxxer[quantization]'" in str(info.value)
    check_quantization_supported(True, True)


@pytest.mark.parametrize("where", ["trainer_argument", "model_init_kwargs"])
def test_quantized_base_on_this_cpu_machine_fails_before_loading(tiny_model_dir, tmp_path, where):
    q = BitsAndBytesConfig(load_in_4bit=True)
    if where == "trainer_argument":
        kwargs, args = {"quantization_config": q}, tiny_config(tmp_path)
    else:
        kwargs, args = {}, tiny_config(tmp_path, model_init_kwargs={"quantization_config": q})
    with pytest.raises(ValueError, match="needs bitsandbytes and a CUDA GPU"):
        ReasonMaxxerTrainer(tiny_model_dir, alternating_reward, args=args, train_dataset=chat_prompts(2), **kwargs)
