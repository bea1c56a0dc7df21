"""Capacity: the highest load each tenant alone and each co-located set sustains under its
SLO (``search``: the bracket and the decisions; ``run``: the probes against real servers)."""
