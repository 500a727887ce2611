"""``llm-gateway replay``: classify and plan captured requests under a new policy, report what moves (docs/replay.md).

One pass over the capture (:mod:`.run`): :mod:`.reader` (lines → validated records, bad ones counted) →
:mod:`.features` (what the classifier reads, from the body or the record's routing view) → :mod:`.side` (one
policy's decision: the live request path without backends) → :mod:`.diff` (moves, new errors) and
:mod:`.fidelity` (what reproduces, what the capture lacked) → :mod:`.render`; :mod:`.command` is the CLI.
"""
