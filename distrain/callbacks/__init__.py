"""Callbacks: your code at the loop's moments (distrain.fit(callbacks=[...]) or the config's callbacks:).

- base.py  the hooks, the `Callback` protocol, what a callback sees (`Run`), and the run's `Callbacks`
- ema.py   EMA, the built-in exponential moving average of the weights (config name: ema)

This package's __init__ imports nothing.
"""
