"""The kernel: what every floor may use. Errors, schema checks for config dataclasses
and TOML, atomic file and weights I/O, environment and timing helpers. It imports
nothing else of hpmodel.
"""
