"""A user's package of training parts, named from YAML by import path (see examples/plugins.yaml)."""
