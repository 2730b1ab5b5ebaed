"""Training: typed configs, the loop, optimisation, metrics and the ``peftkit`` command line."""
