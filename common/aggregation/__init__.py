"""Robust aggregation: the rules (:mod:`.rules`), the pre-aggregators that run before them
(:mod:`.preagg`), the tensor helpers they share (:mod:`.tensors`), order statistics by sorting
network (:mod:`.sortnet`) and the native CPU kernels (:mod:`.native`, ``kernels/``)."""
