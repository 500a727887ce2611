"""``llm-gateway cohorts calibrate``: a policy's cohorts against labeled requests, and semantic thresholds that
fit them (docs/semantic.md, "calibrate")."""
