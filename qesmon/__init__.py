"""Shared core of qes-monitoring: settings, the event contract, errors, storage access, CLI.

Every other package (``pipeline``, ``rules``, ``notifier``, ``api``) depends on this one and
never the other way round. ``qesmon.sdk`` is the Python SDK the platform embeds.
"""
