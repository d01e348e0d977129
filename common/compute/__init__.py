"""Gradient machinery shared by the workers and the server (guiding or root gradients): which
path computes a group of per-batch gradients fastest for a model (:mod:`.paths`), and the
one-pass per-worker gradients of Linear-only models (:mod:`.linear_grads`)."""
