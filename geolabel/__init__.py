"""geolabel: collaborative labelling and active learning for georeferenced imagery, on Label Studio."""

__version__ = "0.1.0"
