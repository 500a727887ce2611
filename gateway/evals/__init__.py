"""Online evaluators: judge each finished answer (JSON, schema, tool calls, truncation, refusals, latency)."""
