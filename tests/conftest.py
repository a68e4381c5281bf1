import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch


torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a saved tiny Llama + word-level tokenizer with a chat template."""
    from trl_reasonmaxxer.testing import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="module")
def tiny_pair():
    """A tiny Llama with sharp, varied logits (the default init is nearly uniform) and a random LoRA teacher."""
    from peft import LoraConfig, get_peft_model

    from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, seed=1)
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        if p.dim() == 2:
            p.data.normal_(0.0, 0.5, generator=g)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, 0.2, generator=g)
    return peft_model.eval(), tokenizer
