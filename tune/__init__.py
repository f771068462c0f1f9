"""ponderlab.tune: Ray Tune searches over plugin combinations."""
