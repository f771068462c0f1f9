"""ponderlab.core: interfaces, spec, plugin registry, model assembly, trainer, CLI."""
