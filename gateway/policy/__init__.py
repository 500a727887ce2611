"""The routing policy: schema, loading with positions, and cross-checks. Imports no web framework or HTTP client."""

from gateway.policy.errors import PolicyError, PolicyIssue
from gateway.policy.loader import LoadedPolicy, load_policy, parse_policy
from gateway.policy.schema import PolicySpec

__all__ = ["LoadedPolicy", "PolicyError", "PolicyIssue", "PolicySpec", "load_policy", "parse_policy"]
