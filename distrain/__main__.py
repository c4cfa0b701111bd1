"""`python -m distrain ...` (what torchrun runs with `-m distrain`)."""

from distrain.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
