"""llm-gateway: an OpenAI-compatible gateway for rolling out merged checkpoints on vLLM."""

__version__ = "0.1.0"
