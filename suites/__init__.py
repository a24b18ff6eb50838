"""Declarative benchmark suites (TOML files beside this module)."""
