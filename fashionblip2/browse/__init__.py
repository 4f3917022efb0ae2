"""``fashionblip2 browse``: a local, read-only web app over a finished run (the dataset explorer,
composed search with the run's models, the leakage pairs). :mod:`.app` is the ASGI app, :mod:`.data`
the tables and the path check, :mod:`.search` the models, indexes and queries."""
