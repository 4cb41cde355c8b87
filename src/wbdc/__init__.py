"""WBDC 2021 solution library: schema, data layer, features, models, metric, blending."""
__version__ = "0.1.0"
