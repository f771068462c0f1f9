"""Built-in ponderlab plugins."""
