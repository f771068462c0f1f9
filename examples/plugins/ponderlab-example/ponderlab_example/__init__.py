"""ponderlab-example: a small third-party plugin package for ponderlab.

Three plugins, each in its own module with its own entry point:
  gru              backbone  stacked residual GRU layers            (ponderlab_example.gru)
  confidence_exit  halting   early exit on a learned confidence     (ponderlab_example.confidence)
  majority         task      majority vote of a bit string          (ponderlab_example.majority)
"""

__version__ = "0.1.0"
