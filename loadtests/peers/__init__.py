"""What ``loadtests/overhead.py`` measures: the proxies (the gateway and its peers), their shared upstream, the load.

The configs next to this file are the ones the benchmark runs, with ``@PLACEHOLDERS@`` filled in at run time:
``gateway-policy.yaml``, ``nginx-proxy.conf``, ``litellm.yaml`` (vllm-router takes only command-line flags, see
:func:`peers.processes.vllm_router`) and ``nginx-upstream.conf`` (the upstream every path is measured against).
"""
