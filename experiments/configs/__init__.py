"""Sweep grids: each file defines ``get_config() -> medft_jax.grid.Grid``."""
