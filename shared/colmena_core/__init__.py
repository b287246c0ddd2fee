"""Colmena: steer ensembles of simulations with machine learning.

The package keeps the public API of the original Colmena library (thinkers, queues, task
servers, results) and adds transports for running a campaign through a message broker.
"""

__version__ = "0.1.0"
