"""Shared core of qes-monitoring: settings, the event contract, errors, storage access, SDK.

The ground floor: every other package (``pipeline``, ``rules``, ``notifier``, ``api`` and the
entry points in ``cli``) depends on this one and never the other way round; nothing here
imports them (``tests/test_layers.py``). ``qesmon.sdk`` is the Python SDK the platform embeds.
"""
