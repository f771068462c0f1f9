"""ponderlab: a plugin framework for studying Adaptive Computation Time on sequence models.

The Python API mirrors the CLI:

    import ponderlab
    model = ponderlab.build_model(backbone={"name": "lstm", "n_layers": 2},
                                  halting={"name": "graves", "max_hops": 4}, vocab_size=128)
    results = ponderlab.run("examples/quickstart.yaml")
"""

from ponderlab.core.api import build_model, build_task, evaluate, load_spec, run, train_step

__version__ = "0.1.0"

__all__ = ["build_model", "build_task", "evaluate", "load_spec", "run", "train_step", "__version__"]
