"""The promotion gate (``llm-gateway eval``): a merged candidate against its sources, per cohort, on one dataset.

Stages, one module each: ``dataset`` (JSONL cases) → ``backends``/``caller`` (each model's own replicas, streamed,
retried) → ``runner`` (bounded pool) → ``scoring``/``judge`` (evaluators) → ``stats``/``decide`` (verdict per cohort)
→ ``report``/``chart``/``propose`` (outputs) → ``push`` (into a running gateway's eval windows). ``command`` wires
them; ``options`` is the command line. Importing this package is cheap: the CLI imports ``options`` at start-up.
"""
