"""Pulling ``amplitude://`` and ``mixpanel://`` sources through the vendors' export APIs (see ``stage``).

Kept empty: ``sources`` is read by the command line before any heavy module is imported.
"""
