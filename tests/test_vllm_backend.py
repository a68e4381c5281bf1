"""vLLM rollouts with vLLM mocked out at its boundary (``vllm.LLM``/``SamplingParams``, TRL's ``VLLMClient``):
the rows are the HF backend's, seeded per prompt; without vLLM the trainer falls back to ``generate``."""

from __future__ import annotations

import logging
import os
import sys
import types
from collections import Counter

import pytest
from trl.generation import vllm_client  # before any test puts a fake `vllm` in sys.modules

from trl_reasonmaxxer import ReasonMaxxerConfig, ReasonMaxxerTrainer, offline
from trl_reasonmaxxer.testing import make_tiny_model, make_tiny_tokenizer
from trl_reasonmaxxer.vllm_backend import VLLMRollouts, model_path

from .helpers import CallCounter, alternating_reward, chat_prompts, pool_key, tiny_config


EOS = make_tiny_tokenizer().eos_token_id


def scripted_ids(seed: int) -> list[int]:
    """What the fake engine samples for a seed: even seeds stop at EOS and run on past it (the row must be cut
    after the EOS), odd seeds never stop (truncated)."""
    return [5 + seed % 7, EOS, 9, 9] if seed % 2 == 0 else [5 + seed % 7, 8, 8]


class FakeLLM:
    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs, self.requests, self.slept = kwargs, [], None
        FakeLLM.instances.append(self)

    def generate(self, prompts, sampling_params, use_tqdm):
        self.requests.extend(zip(prompts, sampling_params, strict=True))
        return [
            # children in reverse order: the backend must order them by index
            types.SimpleNamespace(
                outputs=[
                    types.SimpleNamespace(index=j, token_ids=tuple(scripted_ids(params.seed + j)))
                    for j in reversed(range(params.n))
                ]
            )
            for params in sampling_params
        ]

    def sleep(self, level):
        self.slept = level


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def make_trainer(model_dir, output_dir, **config):
    return ReasonMaxxerTrainer(
        model=model_dir,
        reward_funcs=alternating_reward,
        args=tiny_config(output_dir, **config),
        train_dataset=chat_prompts(3),
    )


def test_colocated_vllm_rows_match_the_hf_rows(fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    hf = make_trainer(tiny_model_dir, tmp_path / "hf").build_rollout_dataset()
    hf_generate = CallCounter(offline.generate_completions)
    monkeypatch.setattr(offline, "generate_completions", hf_generate)
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path / "vllm",
        use_vllm=True,
        vllm_gpu_memory_utilization=0.5,
        vllm_enable_sleep_mode=True,
        top_k=7,
        seed=3,
    )
    vllm_pool = trainer.build_rollout_dataset()

    assert hf_generate.calls == 0
    (llm,) = FakeLLM.instances
    assert llm.kwargs["model"] == tiny_model_dir and llm.kwargs["gpu_memory_utilization"] == 0.5
    assert "distributed_executor_backend" not in llm.kwargs  # one process: vLLM's own executor
    assert llm.slept == 2  # the engine gave its memory back after the offline phase
    # the HF backend's rows: same columns, prompts, group sizes
    assert vllm_pool.column_names == hf.column_names
    assert vllm_pool["prompt_ids"] == hf["prompt_ids"]
    assert Counter(vllm_pool["prompt_index"]) == {0: 4, 1: 4, 2: 4}
    # one request per prompt, seeded by prompt index: sample j of prompt i has seed 3 + 4 i + j
    assert [p["prompt_token_ids"] for p, _ in llm.requests] == trainer.offline.prompt_ids
    params = [s for _, s in llm.requests]
    assert [s.seed for s in params] == [3, 7, 11] and {s.n for s in params} == {4}
    assert params[0].stop_token_ids == [EOS] and params[0].max_tokens == 3
    assert (params[0].temperature, params[0].top_p, params[0].top_k) == (1.0, 0.95, 7)
    for k, row in enumerate(vllm_pool):
        ids = scripted_ids(3 + k)
        if ids[1] == EOS:
            assert row["completion_ids"] == ids[:2] and not row["truncated"]  # EOS kept, the rest cut
        else:
            assert row["completion_ids"] == ids and row["truncated"]
    # vLLM samples differ from HF's: their own cache; a second run reuses it without starting an engine
    assert trainer.rollout_cache_dir != make_trainer(tiny_model_dir, tmp_path / "vllm").rollout_cache_dir
    again = make_trainer(tiny_model_dir, tmp_path / "vllm", use_vllm=True, top_k=7, seed=3)
    assert pool_key(again.build_rollout_dataset()) == pool_key(vllm_pool) and len(FakeLLM.instances) == 1


def test_server_mode_sends_one_seeded_request_per_prompt(fake_vllm, tiny_model_dir, tmp_path, monkeypatch):
    class FakeClient:
        def __init__(self, **kwargs):
            self.kwargs, self.calls = kwargs, []
            clients.append(self)

        def generate(self, prompts, n, logprobs, generation_kwargs):
            self.calls.append((prompts, n, generation_kwargs))
            return {"completion_ids": [scripted_ids(generation_kwargs["seed"] + j) for j in range(n)]}

    clients: list[FakeClient] = []
    monkeypatch.setattr(vllm_client, "VLLMClient", FakeClient)
    trainer = make_trainer(
        tiny_model_dir, tmp_path, use_vllm=True, vllm_mode="server", vllm_server_base_url="http://gpu-box:8000"
    )
    rows = trainer.build_rollout_dataset()
    (client,) = clients
    assert client.kwargs["base_url"] == "http://gpu-box:8000" and not FakeLLM.instances
    calls = sorted(client.calls, key=lambda c: c[2]["seed"])
    assert [c[0] for c in calls] == [[ids] for ids in trainer.offline.prompt_ids]
    assert [c[2]["seed"] for c in calls] == [0, 4, 8] and {c[1] for c in calls} == {4}
    assert rows["completion_ids"][0] == scripted_ids(0)[:2] and rows["truncated"][:2] == [False, True]


def test_use_vllm_without_vllm_falls_back_to_generate_with_one_warning(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    caplog.set_level(logging.WARNING)
    trainer = make_trainer(tiny_model_dir, tmp_path / "fallback", use_vllm=True)
    fallback = trainer.build_rollout_dataset()
    warnings = [r.getMessage() for r in caplog.records if "vLLM is not installed" in r.getMessage()]
    assert len(warnings) == 1 and "pip install trl-reasonmaxxer[vllm]" in warnings[0]
    assert "has no effect" not in caplog.text  # the vLLM arguments are honoured, not ignored
    hf = make_trainer(tiny_model_dir, tmp_path / "hf")
    assert pool_key(fallback) == pool_key(hf.build_rollout_dataset())
    assert os.path.basename(trainer.rollout_cache_dir) == os.path.basename(hf.rollout_cache_dir)


def test_colocate_needs_the_model_on_disk_and_one_gpu_per_process(fake_vllm, tmp_path):
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    with pytest.raises(ValueError, match="built in memory.*save_pretrained"):
        model_path(model)
    args = tiny_config(tmp_path, use_vllm=True, vllm_tensor_parallel_size=2)
    with pytest.raises(ValueError, match="vllm_tensor_parallel_size=2 with 2 training processes.*vllm_mode='server'"):
        VLLMRollouts(model, tokenizer, args, types.SimpleNamespace(num_processes=2))


def test_vllm_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="vllm_mode must be one of colocate, server; got 'remote'"):
        ReasonMaxxerConfig(output_dir=str(tmp_path), use_vllm=True, vllm_mode="remote", use_cpu=True)


def test_both_backends_get_every_sampling_setting_explicitly(tiny_model_dir, tmp_path, monkeypatch):
    """The HF backend receives temperature, top_p, top_k, min_p and repetition_penalty as arguments (no longer only
    when they differ from a default, which let a checkpoint's generation_config fill them in, audit F3), and they
    are the values vLLM gets."""
    from trl_reasonmaxxer.vllm_backend import sampling_kwargs

    seen = []
    real = offline.generate_completions
    monkeypatch.setattr(offline, "generate_completions", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    trainer = make_trainer(tiny_model_dir, tmp_path, top_k=None, min_p=None, repetition_penalty=1.0)
    trainer.build_rollout_dataset()
    hf = {k: seen[0][k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
    assert hf == {"temperature": 1.0, "top_p": 0.95, "top_k": None, "min_p": None, "repetition_penalty": 1.0}
    vllm = sampling_kwargs(trainer.args, {EOS})
    assert {k: vllm[k] for k in hf} == {
        "temperature": 1.0,
        "top_p": 0.95,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
    }
    # generation_kwargs override both backends' settings
    args = tiny_config(tmp_path / "x", generation_kwargs={"top_k": 3})
    assert sampling_kwargs(args, {EOS})["top_k"] == 3
