"""The `aivd` command line."""
