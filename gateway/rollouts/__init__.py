"""Progressive rollouts per cohort: a candidate stepped up on a route by the evidence of its answers."""
