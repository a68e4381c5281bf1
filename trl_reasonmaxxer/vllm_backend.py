"""Rollouts with vLLM (``use_vllm=True``): the rows of ``rollouts.generate_completions``, faster.

Two of GRPOConfig's modes: ``"colocate"`` runs one vLLM engine in each training process, on its GPU, for the
offline phase only; ``"server"`` sends the prompts to a running ``trl vllm-serve`` / ``vllm serve`` of the base model.
Either way the engine samples the *base* model loaded from its id or folder: the LoRA adapter is untrained during
the offline phase, so, unlike GRPO, no weights are ever synchronised.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from .rollouts import completion_row, eos_token_ids


logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install trl-reasonmaxxer[vllm]"


def vllm_importable() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_use_vllm(use_vllm: bool) -> bool:
    """Whether the rollouts use vLLM: ``use_vllm`` when vLLM imports, otherwise HF ``generate`` after one warning.

    A fallback rather than an error: the rows are the same, only slower, and the offline phase runs once.
    """
    if not use_vllm or vllm_importable():
        return use_vllm
    logger.warning(
        "use_vllm=True but vLLM is not installed: the rollouts are generated with transformers' generate instead "
        "(the same rows, slower). Install vLLM with `%s` to use it.",
        INSTALL_HINT,
    )
    return False


def request_seeds(prompt_indices: Sequence[int], num_generations: int, seed: int) -> list[int]:
    """The seed of each prompt's request. vLLM seeds sample ``j`` of a request with ``seed + j``, so prompt ``i``
    gets ``seed + i * num_generations``: every (prompt, sample) has its own stream, whichever process or batch
    generates it."""
    return [seed + i * num_generations for i in prompt_indices]


def sampling_kwargs(args, eos_ids: set[int]) -> dict:
    """vLLM ``SamplingParams`` keywords for the config's sampling settings (``generation_kwargs`` win, as in GRPO)."""
    kwargs = dict(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k or 0,  # vLLM: 0 disables top-k (None is GRPO-style "off" too)
        min_p=0.0 if args.min_p is None else args.min_p,
        repetition_penalty=args.repetition_penalty,
        max_tokens=args.max_completion_length,
        # the same stop set as the HF backend: the tokenizer's EOS and the generation config's
        stop_token_ids=sorted(eos_ids),
    )
    kwargs.update(args.generation_kwargs or {})
    return kwargs


def model_path(model) -> str:
    """The id or folder vLLM loads the base model from."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", "")
    if not path:
        raise ValueError(
            "use_vllm=True loads the base model into vLLM by its id or folder, but this model was built in memory. "
            "Save it with model.save_pretrained(folder) and pass model=folder, or set use_vllm=False."
        )
    return path


class VLLMRollouts:
    """``generate(prompt_ids, prompt_indices)`` → per prompt a list of ``{"completion_ids", "truncated"}``."""

    def __init__(self, model, tokenizer, args, accelerator):
        self.args = args
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.params = sampling_kwargs(args, self.eos_ids)
        self.llm = self.client = None
        if args.vllm_mode == "server":
            from trl.generation.vllm_client import VLLMClient

            # plain HTTP requests: no NCCL weight-sync group is opened, since the served base model never changes
            self.client = VLLMClient(
                base_url=args.vllm_server_base_url,
                host=args.vllm_server_host,
                server_port=args.vllm_server_port,
                connection_timeout=args.vllm_server_timeout,
            )
            return
        if accelerator.num_processes > 1 and args.vllm_tensor_parallel_size > 1:
            raise ValueError(
                f"vllm_tensor_parallel_size={args.vllm_tensor_parallel_size} with {accelerator.num_processes} "
                "training processes is not supported in colocate mode. Serve the model with `trl vllm-serve "
                "--model <model> --tensor-parallel-size N` and set vllm_mode='server', or launch one process."
            )
        from vllm import LLM

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        llm_kwargs = dict(
            model=model_path(model),
            tensor_parallel_size=args.vllm_tensor_parallel_size,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            max_model_len=args.vllm_max_model_length,
            enable_sleep_mode=args.vllm_enable_sleep_mode,
            model_impl=args.vllm_model_impl,
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
            quantization="bitsandbytes" if getattr(base, "is_loaded_in_4bit", False) else None,
        )
        if accelerator.num_processes > 1:
            from trl.trainer.utils import ensure_master_addr_port

            # one engine per process on its own GPU, inside the launcher's process group, as GRPOTrainer colocates
            ensure_master_addr_port()
            llm_kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(**llm_kwargs)

    def generate(self, prompt_ids: Sequence[Sequence[int]], prompt_indices: Sequence[int]) -> list[list[dict]]:
        n = self.args.num_generations
        seeds = request_seeds(prompt_indices, n, self.args.seed)
        if self.client is not None:
            # one request per prompt, because a request has one seed; sent concurrently like TRL's own client
            def send(k):
                params = {**self.params, "seed": seeds[k]}
                out = self.client.generate(prompts=[list(prompt_ids[k])], n=n, logprobs=None, generation_kwargs=params)
                return out["completion_ids"]

            with ThreadPoolExecutor(max_workers=min(32, len(prompt_ids))) as pool:
                groups = list(pool.map(send, range(len(prompt_ids))))
        else:
            from vllm import SamplingParams

            outputs = self.llm.generate(
                [{"prompt_token_ids": list(p)} for p in prompt_ids],
                sampling_params=[SamplingParams(n=n, seed=s, **self.params) for s in seeds],
                use_tqdm=not self.args.disable_tqdm,
            )
            groups = [[c.token_ids for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]
        # vLLM never pads, so a row with no EOS hit max_tokens (or a user stop string): truncated
        return [[completion_row(list(ids), self.eos_ids) for ids in group] for group in groups]

    def close(self) -> None:
        """Give the GPU memory back to training: the engine is not needed after the offline phase."""
        if self.llm is not None and self.args.vllm_enable_sleep_mode:
            self.llm.sleep(level=2)  # drops weights and KV cache, which deleting the engine may not do in-process
        self.llm = self.client = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
