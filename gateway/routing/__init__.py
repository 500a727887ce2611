"""Routing stages: request features → cohort (classifier) → ordered attempts and mirror targets (planner)."""
