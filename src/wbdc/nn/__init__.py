"""Multi-task nets (Shared-Bottom, MMoE, PLE) over all 7 actions, trained on CPU from arrays.

Layers: ``inputs`` (input layer) -> ``modules`` (expert/gate/tower banks, CGC level) ->
``models`` (wiring, ``build_model``) -> ``losses`` (balancing) -> ``trainer`` -> ``pipeline``
(offline/online runs over a FeatureStore); ``data`` builds the arrays, ``diagnostics`` the gate
report.
"""
