"""One run over several data-parallel workers on Ray Train (see docs/scale.md).

`group`   how one training step is split and reduced: the whole batch in one process
          (`LocalGroup`), or each rank's rows with sums reduced over the workers (`TorchGroup`).
`worker`  the per-worker function Ray Train runs: the same Trainer, with a TorchGroup.
`launch`  the driver: run directory, Ray (local or `address`), TorchTrainer, failures.

Only `group` is imported by the trainer; Ray is imported when a distributed run starts.
"""
