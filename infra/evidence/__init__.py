"""Evidence for the provider reports: pure computation over shot and identity facts. No I/O.

`facts` (the inputs), `summary` (per-group figures), `stats` (provider comparisons), `scorecard` (the weighted
research scorecard), `costs` (monthly projections and break-even) and `render` (JSON and CSV).
"""
