"""ponderlab.tune: Ray Tune searches over plugin combinations (`ponderlab tune`).

Modules (Ray is imported only where a search runs):
  spec     the search spec: `search:` domains, `tune:` options, validation of every grid point
  search   Ray Tune setup: param space, scheduler, searcher, start / resume, outputs
  trial    the trainable: one normal ponderlab run reporting each validation + checkpoint
  results  the results table (CSV, Markdown) and best.yaml
  cli      the `ponderlab tune` command

    from ponderlab.tune.spec import load_tune_spec
    from ponderlab.tune.search import run_search
    outcome = run_search(load_tune_spec("examples/tune/seed000_small.yaml", ["training.steps=50"]))
"""
