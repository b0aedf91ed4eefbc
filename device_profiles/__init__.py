"""Bundled device profiles: one TOML file per device kind (see README.md for the schema)."""
