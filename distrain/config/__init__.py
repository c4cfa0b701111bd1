"""What a run is told: a YAML file plus `dotted.key=value` overrides, validated before anything is built.

- schema.py    the sections as keyword-only dataclasses, each field with its one-line doc
- parse.py     YAML and overrides -> Config (load_config), and back (dump_config)
- coerce.py    values checked against their annotations; errors name the dotted key
- registry.py  what a config can name: built-in short names and import paths, `args` checked like keys

No module here imports torch: `distrain --help` and config errors stay fast.
"""
