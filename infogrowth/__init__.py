"""InfoGrowth stream: online cleaning and selection of image-text (and labelled) samples.

The algorithm core (encode, clean, gain, sample, store) runs without Kafka; the Faust
agents in ``agents/`` are thin wiring over it.
"""

__version__ = "0.1.0"
