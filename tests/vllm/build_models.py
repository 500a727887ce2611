"""Build the tiny models the real-vLLM tests serve: a base model, two LoRA source specialists, and their merge.

Runs in the vLLM environment (``.venv-vllm``: torch, transformers, peft, tokenizers); nothing is downloaded.

* ``base``: a Llama with hidden size 64, 2 layers, 2 heads of ``head_dim`` 32 (vLLM's CPU attention backend
  needs a head size of 32, 64, 80, ...) and tied embeddings, random weights from a fixed seed. Its tokenizer is a
  byte-level BPE trained here on fixed text, with a ChatML chat template that takes ``content`` as a plain string
  and renders tools the Hermes way (``<tool_call>{...}</tool_call>``, vLLM's ``hermes`` parser).
* ``billing-specialist`` and ``policy-specialist``: LoRA adapters (peft, rank 8) on every linear layer of the base,
  random but distinct (one seed each), saved as peft adapters that ``vllm --lora-modules`` loads.
* ``merged-v1``: a full checkpoint, ``W_base + sum_i w_i * (W_i - W_base)`` where ``W_i`` is the base with adapter
  ``i`` merged in by peft (``merge_and_unload``): a linear merge of the sources' parameter deltas.
* ``embedder``: a tiny BERT encoder saved as a sentence-transformers model, for a vLLM pooling server, with
  reference embeddings computed here (``build_embedder.py``).

The output goes to ``OUT/<key>/`` where ``key`` hashes the build scripts and the library versions, so a second run is a
no-op (``OUT/<key>/COMPLETE`` marks a finished build). Usage::

    python tests/vllm/build_models.py build --out .cache/vllm/models   # prints the model directory
    python tests/vllm/build_models.py verify DIR [--weights 0.6,0.4]   # re-derives the merge from the adapters

The weights make gibberish: tests assert shapes, token counts, routing and behavior, never text.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

SEED = 1234
SOURCES = {"billing-specialist": 101, "policy-specialist": 202}  # adapter name -> its seed
MERGE_WEIGHTS = {"billing-specialist": 0.6, "policy-specialist": 0.4}
MERGED = "merged-v1"
LORA_RANK = 8
LORA_ALPHA = 16
LORA_STD = 0.1  # delta = (alpha / r) * B @ A: about 0.06 per entry, three times the base init (0.02)
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
EMBEDDER = "embedder"
EMBEDDER_SCRIPT = Path(__file__).with_name("build_embedder.py")

CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- 'You may call one or more functions. Function signatures are within <tools></tools>:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    '{{- \'\\n</tools>\\nReturn each call as <tool_call>{"name": ..., "arguments": ...}</tool_call>'
    "<|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if message.content %}{{- message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{%- set arguments = call.function.arguments %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + call.function.name + \'", "arguments": \' }}'
    "{{- arguments if arguments is string else arguments | tojson }}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "Hello! How can I help you with your account today?",
    "I would like a refund for the duplicate charge on my last invoice.",
    "A chargeback was opened on order 4411; the billing team will review it within five business days.",
    "Our refund policy allows returns within 30 days of purchase with the original receipt.",
    "Policy exception requests go to the policy queue; an agent answers within one day.",
    "Please call the lookup_invoice tool with the invoice id to fetch the invoice.",
    '{"name": "lookup_invoice", "arguments": {"invoice_id": "INV-2024-0042", "reason": "refund"}}',
    '{"type": "object", "properties": {"reason": {"type": "string", "enum": ["refund", "chargeback"]}}}',
    "The quick brown fox jumps over the lazy dog. 0123456789 [] {} () <> , . ; : ! ? ' \"",
    "Sorry, I cannot help with that request, but I can connect you with a human agent.",
    "Thanks for waiting. Your subscription renews on the first day of every month.",
    "The merged checkpoint serves billing and policy questions; the specialists keep the rest.",
]


def cache_key() -> str:
    import peft
    import tokenizers
    import torch
    import transformers

    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(EMBEDDER_SCRIPT.read_bytes())
    for module in (torch, transformers, peft, tokenizers):
        digest.update(f"{module.__name__}={module.__version__};".encode())
    return digest.hexdigest()[:16]


def build_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=2048,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    wrapped.save_pretrained(out)
    return wrapped


def build_base(out: Path, tokenizer: Any) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model


def fresh_base(base_dir: Path) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()


def build_adapter(base_dir: Path, out: Path, seed: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=LORA_RANK,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(fresh_base(base_dir), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_A" in name or "lora_B" in name:  # peft starts B at zero (a no-op adapter): make it random
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_STD)
    model.save_pretrained(out)


def build_merged(base_dir: Path, adapters: dict[str, Path], weights: dict[str, float], out: Path) -> None:
    import torch
    from peft import PeftModel

    base = fresh_base(base_dir)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    merged_state = {k: v.clone() for k, v in base_state.items()}
    for name, adapter_dir in adapters.items():
        with_adapter = PeftModel.from_pretrained(fresh_base(base_dir), adapter_dir).merge_and_unload()
        for key, value in with_adapter.state_dict().items():
            merged_state[key] += weights[name] * (value - base_state[key])
    base.load_state_dict(merged_state)
    base.save_pretrained(out)
    shutil.copy(base_dir / "tokenizer.json", out)
    shutil.copy(base_dir / "tokenizer_config.json", out)
    for extra in ("chat_template.jinja", "special_tokens_map.json"):
        if (base_dir / extra).exists():
            shutil.copy(base_dir / extra, out)
    recipe = {"method": "linear_delta", "base": "base", "sources": weights, "dtype": str(torch.float32)}
    (out / "merge_config.json").write_text(json.dumps(recipe, indent=2) + "\n")


def build(root: Path) -> Path:
    import torch

    torch.set_num_threads(2)
    target = root / cache_key()
    if (target / "COMPLETE").exists():
        print(f"models: cached in {target}", file=sys.stderr)
        return target
    started = time.perf_counter()
    staging = root / f"{target.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tokenizer = build_tokenizer(staging / "base")
    build_base(staging / "base", tokenizer)
    adapters = {name: staging / name for name in SOURCES}
    for name, seed in SOURCES.items():
        build_adapter(staging / "base", adapters[name], seed)
    build_merged(staging / "base", adapters, MERGE_WEIGHTS, staging / MERGED)
    from build_embedder import build_embedder  # a sibling module: this file runs as a script

    build_embedder(staging / EMBEDDER)
    (staging / "COMPLETE").write_text(json.dumps({"seed": SEED, "sources": SOURCES, "weights": MERGE_WEIGHTS}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    print(f"models: built in {target} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return target


def verify(models: Path, weights: dict[str, float]) -> list[str]:
    """Problems with ``models/merged-v1`` against ``base + sum_i w_i * scale * B_i @ A_i``, computed independently of
    peft straight from the adapters' saved tensors; an empty list means the merge is exactly that linear merge."""
    import torch
    from safetensors.torch import load_file

    base = load_file(models / "base" / "model.safetensors")
    merged = load_file(models / MERGED / "model.safetensors")
    expected = {key: value.clone() for key, value in base.items()}
    for name, weight in weights.items():
        config = json.loads((models / name / "adapter_config.json").read_text())
        scale = config["lora_alpha"] / config["r"]
        tensors = load_file(models / name / "adapter_model.safetensors")
        for key, lora_a in tensors.items():
            if ".lora_A." not in key:
                continue
            lora_b = tensors[key.replace(".lora_A.", ".lora_B.")]
            target = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            expected[target] += weight * scale * (lora_b @ lora_a)
    problems = []
    if set(merged) != set(base):
        problems.append(f"merged tensors {sorted(set(merged) ^ set(base))} differ from the base's")
    changed = 0
    for key, value in expected.items():
        if key not in merged:
            continue
        if not torch.allclose(merged[key], value, atol=1e-5, rtol=1e-4):
            error = (merged[key] - value).abs().max().item()
            problems.append(f"{key}: max |merged - expected| = {error:.3g}")
        changed += int(not torch.equal(value, base[key]))
    if changed == 0:
        problems.append("the adapters change no tensor of the base")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build")
    build_cmd.add_argument("--out", type=Path, required=True)
    verify_cmd = commands.add_parser("verify")
    verify_cmd.add_argument("models", type=Path)
    verify_cmd.add_argument("--weights", help="comma-separated weights in the order of the sources")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build(args.out.resolve()))
        return 0
    weights = dict(MERGE_WEIGHTS)
    if args.weights:
        weights = dict(zip(SOURCES, (float(w) for w in args.weights.split(",")), strict=True))
    problems = verify(args.models, weights)
    for problem in problems:
        print(problem)
    print(f"merge check: {'FAILED' if problems else 'ok'} ({len(problems)} problems)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
