"""The tiny embedding model the real-vLLM tests serve on a vLLM pooling server (``--runner pooling``).

* ``embedder``: a BERT encoder (``BertModel``: hidden size 64, 2 layers, 2 heads of size 32, seeded random
  weights) with a WordPiece tokenizer trained here on fixed text (``[CLS] text [SEP]``), saved the way
  sentence-transformers saves a model (``modules.json``, ``1_Pooling/config.json`` with mean pooling, a
  ``Normalize`` module), so vLLM pools by the mean of the tokens and normalizes, as it would a real one.
* ``embedder/reference.json``: for :data:`REFERENCE_TEXTS`, the token count and the embedding computed here with
  transformers (mean over the attention mask, L2-normalized): what the tests compare vLLM's vectors with, through
  the gateway.

Called by ``build_models.py`` (runs in ``.venv-vllm``); nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SEED = 4321
VOCAB_SIZE = 512
HIDDEN_SIZE = 64
MAX_POSITIONS = 512
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
REFERENCE_TEXTS = [
    "I want a refund for order 4411.",
    "What is the weather like today?",
    "Policy exception requests go to the policy queue.",
]
CORPUS = [
    "Hello! How can I help you with your account today?",
    "I would like a refund for the duplicate charge on my last invoice.",
    "A chargeback was opened on order 4411; the billing team will review it within five business days.",
    "Our refund policy allows returns within 30 days of purchase with the original receipt.",
    "Policy exception requests go to the policy queue; an agent answers within one day.",
    "What is the weather like today? Sunny, with a chance of rain in the evening.",
    "The quick brown fox jumps over the lazy dog. 0123456789 [] {} () <> , . ; : ! ? ' \"",
    "Embeddings map each text to a vector; similar texts get nearby vectors.",
]


def build_tokenizer(out: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )
    wrapped.save_pretrained(out)
    return wrapped


def write_sentence_transformers_config(out: Path) -> None:
    """The files a sentence-transformers model has, which vLLM reads for its pooler: mean pooling, normalized."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (out / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (out / "1_Pooling").mkdir()
    pooling = {
        "word_embedding_dimension": HIDDEN_SIZE,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (out / "2_Normalize").mkdir()
    config = {"max_seq_length": MAX_POSITIONS, "do_lower_case": False}
    (out / "sentence_bert_config.json").write_text(json.dumps(config, indent=2) + "\n")


def reference_embeddings(model: Any, tokenizer: Any) -> list[dict[str, Any]]:
    import torch

    references = []
    with torch.no_grad():
        for text in REFERENCE_TEXTS:
            encoded = tokenizer(text, return_tensors="pt")
            hidden = model(**encoded).last_hidden_state[0]
            mask = encoded["attention_mask"][0].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(0) / mask.sum()
            vector = torch.nn.functional.normalize(mean, dim=0)
            references.append({"text": text, "tokens": int(mask.sum()), "embedding": vector.tolist()})
    return references


def build_embedder(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True)
    tokenizer = build_tokenizer(out)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: vLLM's CPU attention backend takes 32, 64, 80, ...
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = BertModel(config, add_pooling_layer=False).to(torch.float32).eval()
    model.save_pretrained(out)
    write_sentence_transformers_config(out)
    references = reference_embeddings(model, tokenizer)
    (out / "reference.json").write_text(json.dumps(references) + "\n")
