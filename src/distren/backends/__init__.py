"""Renderer backends. Each registers in the entry-point group `distren.backends`."""
