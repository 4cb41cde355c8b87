"""Feature stage library: leak-free date-sliding window statistics, word2vec and
feed_embedding-PCA features, static feed features, and the FeatureStore model stages read.

Modules: ``history`` (per-(key, day) label aggregates, cut before the target day),
``window_stats``, ``w2v``, ``embedding_pca``, ``static``, ``build`` (the stage), ``store``
(the reader: ``from wbdc.features.store import FeatureStore``).
"""
