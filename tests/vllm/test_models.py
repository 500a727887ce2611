"""The models the servers load: the merge is a real linear merge of the sources' deltas, and vLLM tells them apart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from tests.vllm.servers import VllmServer

BUILD_SCRIPT = Path(__file__).with_name("build_models.py")


def verify_merge(vllm_python: Path, models_dir: Path, *weights: str) -> subprocess.CompletedProcess[str]:
    args = [str(vllm_python), str(BUILD_SCRIPT), "verify", str(models_dir)]
    if weights:
        args += ["--weights", ",".join(weights)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_merged_checkpoint_is_base_plus_weighted_adapter_deltas(vllm_python: Path, models_dir: Path) -> None:
    result = verify_merge(vllm_python, models_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "merge check: ok (0 problems)" in result.stdout


def test_merge_check_rejects_other_weights(vllm_python: Path, models_dir: Path) -> None:
    """The check has teeth: the same adapters with equal weights do not give the merged checkpoint."""
    result = verify_merge(vllm_python, models_dir, "0.5", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "merge check: FAILED" in result.stdout


def test_models_ship_their_recipe_and_tokenizer(models_dir: Path) -> None:
    for name in ("base", "merged-v1"):
        files = {p.name for p in (models_dir / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files, name
    for name in ("billing-specialist", "policy-specialist"):
        files = {p.name for p in (models_dir / name).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files, name
    assert (models_dir / "merged-v1" / "merge_config.json").is_file()
    embedder = models_dir / "embedder"
    files = {p.name for p in embedder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "modules.json", "reference.json"} <= files
    assert json.loads((embedder / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True


def test_vllm_serves_the_base_the_adapters_the_merge_and_the_encoder(vllm_servers: dict[str, VllmServer]) -> None:
    sources = httpx.get(f"{vllm_servers['sources'].url}/v1/models", timeout=10).json()["data"]
    merged = httpx.get(f"{vllm_servers['merged'].url}/v1/models", timeout=10).json()["data"]
    assert {(m["id"], m["parent"]) for m in sources} == {
        ("tiny-base", None),
        ("billing-specialist", "tiny-base"),
        ("policy-specialist", "tiny-base"),
    }
    assert [(m["id"], m["max_model_len"]) for m in merged] == [("merged-v1", 512)]
    embedder = httpx.get(f"{vllm_servers['embedder'].url}/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["max_model_len"]) for m in embedder] == [("embedder", 512)]


def test_each_model_generates_its_own_tokens(vllm_servers: dict[str, VllmServer]) -> None:
    """Greedy decoding of one prompt differs between the base, each adapter and the merge: the LoRA adapters are
    applied by vLLM and the merge changed the weights."""
    outputs = {}
    for server, model in [
        ("sources", "tiny-base"),
        ("sources", "billing-specialist"),
        ("sources", "policy-specialist"),
        ("merged", "merged-v1"),
    ]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "Where is my refund?"}],
            "max_tokens": 12,
            "temperature": 0,
            "return_token_ids": True,
        }
        answer = httpx.post(f"{vllm_servers[server].url}/v1/chat/completions", json=body, timeout=60).json()
        assert answer["model"] == model
        outputs[model] = tuple(answer["choices"][0]["token_ids"])
        assert len(outputs[model]) == answer["usage"]["completion_tokens"]
    assert len(set(outputs.values())) == 4, outputs
