"""Phase two of loading: cross-references between policy sections.

The schema checks each value on its own; these checks need the whole policy (a route naming a model, exactly one
default cohort, fallback chains without repeats). Each problem is reported with its path so the loader can attach
the YAML position, and misspelled names get a did-you-mean.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable, Iterator
from pathlib import Path as FsPath

from gateway.policy.schema import SOURCES, STICKY_HEADER, Match, PolicySpec, RouteSpec, SemanticSpec
from gateway.policy.yamlpos import Path
from gateway.routing.examples import ExamplesError, load_examples

Problem = tuple[Path, str]

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
"""An HTTP header name (RFC 9110 token)."""
_BACKEND = re.compile(r"^(https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?(/[^\s]*)?|sim://[A-Za-z0-9_.\-]+)$")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    return f"unknown {kind} '{name}'{did_you_mean(name, known)}"


def check_policy(policy: PolicySpec, base_dir: str | FsPath | None = None) -> list[Problem]:
    """``base_dir``: the policy file's directory, where ``examples_file`` paths start; None skips reading them."""
    return [
        *_check_models(policy),
        *_check_cohorts(policy, base_dir),
        *_check_routes(policy),
        *_check_gates(policy),
        *_check_keys(policy),
        *_check_capture(policy),
    ]


def _check_keys(policy: PolicySpec) -> Iterator[Problem]:
    cohorts = [c.name for c in policy.cohorts]
    names = [*policy.public_models, *policy.models]
    for name, spec in (policy.keys or {}).items():
        for i, model in enumerate(spec.models or ()):
            if model not in names:
                yield ("keys", name, "models", i), _unknown("model", model, names)
        for i, cohort in enumerate(spec.cohorts or ()):
            if cohort not in cohorts:
                yield ("keys", name, "cohorts", i), _unknown("cohort", cohort, cohorts)
    yield from _check_forward_headers(policy.limits.forward_headers)


CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"})
"""Never written to a capture file, whatever the policy names."""


def _check_capture(policy: PolicySpec) -> Iterator[Problem]:
    """``capture.cohorts`` names cohorts, ``capture.headers`` names headers that may be kept, and no route's
    ``mirror.capture`` appends to the same file (two writers would rotate it under each other)."""
    capture = policy.capture
    if capture is None:
        return
    cohorts = [c.name for c in policy.cohorts]
    for name in capture.cohorts:
        if name not in cohorts:
            yield ("capture", "cohorts", name), _unknown("cohort", name, cohorts)
    for i, header in enumerate(capture.headers):
        if not _TOKEN.fullmatch(header):
            yield ("capture", "headers", i), f"'{header}' is not a valid header name"
        elif header.lower() in CREDENTIAL_HEADERS:
            yield ("capture", "headers", i), f"'{header}' carries a credential and is never captured"
    for key, route in policy.routes.items():
        if route.mirror is not None and route.mirror.capture is not None and route.mirror.capture.path == capture.path:
            yield (
                ("routes", key, "mirror", "capture", "path"),
                "the same file as capture.path; shadow records need a file of their own",
            )


_SET_BY_GATEWAY = frozenset({"authorization", "host", "content-type"})
_FRAMING = frozenset({"content-length", "transfer-encoding", "content-encoding"})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "expect", "te", "trailer", "upgrade"})


def _check_forward_headers(names: list[str]) -> Iterator[Problem]:
    """Only end-to-end headers the gateway does not write itself. The gateway sends a body of its own, so the
    client's framing (``content-length``, ``transfer-encoding``) would frame it wrongly; hop-by-hop headers
    (``connection``, ``expect: 100-continue``, ``proxy-*``) describe the client's connection, not the gateway's."""
    for i, header in enumerate(names):
        name = header.lower()
        here = ("limits", "forward_headers", i)
        if not _TOKEN.fullmatch(header):
            yield here, f"'{header}' is not a valid header name"
        elif name in _SET_BY_GATEWAY:
            yield here, f"'{header}' is never forwarded (the gateway sets it itself)"
        elif name in _FRAMING:
            yield here, f"'{header}' frames the client's body and is never forwarded (the gateway frames its own)"
        elif name in _HOP_BY_HOP or name.startswith("proxy-"):
            yield here, f"'{header}' is a hop-by-hop header (it concerns one connection) and is never forwarded"


def _check_models(policy: PolicySpec) -> Iterator[Problem]:
    models = policy.models
    if SOURCES in models:
        yield ("models", SOURCES), f"'{SOURCES}' is reserved (it stands for a merged model's sources in fallbacks)"
    for name, spec in models.items():
        for i, url in enumerate(spec.backends):
            if not _BACKEND.match(url):
                yield ("models", name, "backends", i), f"'{url}' is not http(s)://host:port or sim://NAME"
        if spec.kind == "merged" and not spec.sources:
            yield ("models", name, "kind"), "a merged model must list the 'sources' it was merged from"
        if spec.sources and spec.kind not in ("merged", "candidate"):
            yield ("models", name, "sources"), f"only merged or candidate models have sources, not {spec.kind}"
        for i, source in enumerate(spec.sources):
            if source not in models:
                yield ("models", name, "sources", i), _unknown("model", source, models)
            elif source == name:
                yield ("models", name, "sources", i), "a model cannot be its own source"
    for i, public in enumerate(policy.public_models):
        if public in models:
            yield ("public_models", i), f"'{public}' is also a registry model name; public names must differ"
    if len(set(policy.public_models)) != len(policy.public_models):
        yield ("public_models",), "duplicate public model names"


def _check_cohorts(policy: PolicySpec, base_dir: str | FsPath | None) -> Iterator[Problem]:
    seen: set[str] = set()
    defaults = []
    for i, cohort in enumerate(policy.cohorts):
        if cohort.name in seen:
            yield ("cohorts", i, "name"), f"duplicate cohort '{cohort.name}'"
        seen.add(cohort.name)
        if cohort.default:
            defaults.append(i)
        if cohort.match is not None:
            yield from _check_match(cohort.match, ("cohorts", i, "match"), policy, base_dir)
    if not defaults:
        yield ("cohorts",), "exactly one cohort must be 'default: true' (it takes every unmatched request)"
    for extra in defaults[1:]:
        yield ("cohorts", extra, "default"), "only one cohort may be the default"
    if defaults and policy.cohorts[defaults[0]].name not in policy.routes:
        name = policy.cohorts[defaults[0]].name
        yield ("routes",), f"the default cohort '{name}' needs a route (cohorts without one use it)"


def _check_match(match: Match, path: Path, policy: PolicySpec, base_dir: str | FsPath | None) -> Iterator[Problem]:
    if match.content is not None:
        try:
            re.compile(match.content)
        except re.error as exc:
            yield (*path, "content"), f"invalid regex: {exc}"
    if match.header:
        for name in match.header:
            if not _TOKEN.fullmatch(name):
                yield (*path, "header", name), f"'{name}' is not a valid header name"
    if match.model is not None:
        known = set(policy.models) | set(policy.public_models)
        names = [match.model] if isinstance(match.model, str) else match.model
        for name in names:
            if name not in known:
                yield (*path, "model"), _unknown("model", name, known)
    if (
        match.min_prompt_chars is not None
        and match.max_prompt_chars is not None
        and match.min_prompt_chars > match.max_prompt_chars
    ):
        yield (*path, "min_prompt_chars"), "min_prompt_chars is greater than max_prompt_chars"
    if match.semantic is not None:
        yield from _check_semantic(match.semantic, (*path, "semantic"), policy, base_dir)
    for key, children in (("any", match.any), ("all", match.all)):
        for i, child in enumerate(children or ()):
            yield from _check_match(child, (*path, key, i), policy, base_dir)
    if match.not_ is not None:
        yield from _check_match(match.not_, (*path, "not"), policy, base_dir)


def _check_semantic(
    spec: SemanticSpec, path: Path, policy: PolicySpec, base_dir: str | FsPath | None
) -> Iterator[Problem]:
    """The model is a ``kind: embedding`` model of the policy, and the examples file reads (offline: nothing is
    embedded here; that happens when the gateway loads the policy)."""
    embedders = [name for name, model in policy.models.items() if model.kind == "embedding"]
    model = policy.models.get(spec.model)
    if model is None:
        yield (*path, "model"), _unknown("model", spec.model, policy.models)
    elif model.kind != "embedding":
        hint = did_you_mean(spec.model, embedders) if embedders else " (the policy has none)"
        yield (*path, "model"), f"'{spec.model}' is kind: {model.kind}; semantic needs a kind: embedding model{hint}"
    if spec.examples_file is not None and base_dir is not None:
        try:
            load_examples(spec, base_dir)
        except ExamplesError as exc:
            yield (*path, "examples_file"), str(exc)


def _check_routes(policy: PolicySpec) -> Iterator[Problem]:
    cohorts = [c.name for c in policy.cohorts]
    models = policy.models
    for key, route in policy.routes.items():
        here: Path = ("routes", key)
        if key not in cohorts:
            yield here, _unknown("cohort", key, cohorts)
        primaries = [route.target] if route.target is not None else list(route.split or {})
        for arm in primaries:
            field = ("target",) if route.target is not None else ("split", arm)
            if arm not in models:
                yield (*here, *field), _unknown("model", arm, models)
        yield from _check_fallback(policy, route, primaries, here)
        if route.rollout is not None:
            yield from _check_rollout(policy, route, here)
        if route.mirror is not None:
            for i, name in enumerate(route.mirror.to):
                if name not in models:
                    yield (*here, "mirror", "to", i), _unknown("model", name, models)


def _check_fallback(policy: PolicySpec, route: RouteSpec, primaries: list[str], here: Path) -> Iterator[Problem]:
    chain: list[str] = list(primaries)
    for i, entry in enumerate(route.fallback_entries):
        path: Path = (*here, "fallback") if isinstance(route.fallback, str) else (*here, "fallback", i)
        if entry == SOURCES:
            sources = [s for arm in primaries if arm in policy.models for s in policy.models[arm].sources]
            if not sources:
                yield path, "'sources' needs a merged or candidate target that lists its sources"
            expanded = sources
        elif entry not in policy.models:
            yield path, _unknown("model", entry, policy.models)
            continue
        else:
            expanded = [entry]
        for name in expanded:
            if name in chain:
                yield path, f"'{name}' already appears earlier in this route (a fallback cycle)"
            else:
                chain.append(name)


FEEDBACK_EVALUATOR = "user_feedback"


def _check_gates(policy: PolicySpec) -> Iterator[Problem]:
    from gateway.evals.evaluators import EVALUATORS

    known = [*EVALUATORS, FEEDBACK_EVALUATOR]
    cohorts = [c.name for c in policy.cohorts]
    for name, spec in policy.evals.cohorts.items():
        if name not in cohorts:
            yield ("evals", "cohorts", name), _unknown("cohort", name, cohorts)
        for i, evaluator in enumerate(spec.evaluators):
            if evaluator not in EVALUATORS:
                yield ("evals", "cohorts", name, "evaluators", i), _unknown("evaluator", evaluator, EVALUATORS)
        for i, pattern in enumerate(spec.refusal_patterns or ()):
            try:
                re.compile(pattern)
            except re.error as exc:
                yield ("evals", "cohorts", name, "refusal_patterns", i), f"invalid regex: {exc}"
    for g, gate in enumerate(policy.evals.gates):
        for i, evaluator in enumerate(gate.evaluators):
            if evaluator not in known:
                yield ("evals", "gates", g, "evaluators", i), _unknown("evaluator", evaluator, known)
        for i, model in enumerate(gate.models):
            if model not in policy.models:
                yield ("evals", "gates", g, "models", i), _unknown("model", model, policy.models)
        for i, cohort in enumerate(gate.cohorts):
            if cohort not in cohorts:
                yield ("evals", "gates", g, "cohorts", i), _unknown("cohort", cohort, cohorts)


STICKY_KEYS = ("user", "api_key", "request")


def _check_rollout(policy: PolicySpec, route: RouteSpec, here: Path) -> Iterator[Problem]:
    """The candidate, the steps and the assignment key, each reported at its own line."""
    rollout = route.rollout
    assert rollout is not None
    where: Path = (*here, "rollout")
    if route.target is None:
        yield where, "a 'rollout' needs the route's 'target' (the incumbent it moves traffic from), not a 'split'"
    if rollout.candidate not in policy.models:
        yield (*where, "candidate"), _unknown("model", rollout.candidate, policy.models)
    elif rollout.candidate == route.target:
        yield (*where, "candidate"), f"the candidate '{rollout.candidate}' is already the route's target"
    for i, (before, step) in enumerate(itertools.pairwise(rollout.steps), 1):
        if step <= before:
            yield (*where, "steps", i), f"steps must be strictly increasing: {step} comes after {before}"
    sticky = rollout.sticky
    if sticky not in STICKY_KEYS and not STICKY_HEADER.fullmatch(sticky):
        known = "user, api_key, request or header:NAME"
        yield (*where, "sticky"), f"'{sticky}' is not a rollout key: {known}{did_you_mean(sticky, STICKY_KEYS)}"
