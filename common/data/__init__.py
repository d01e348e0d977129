"""The data side of a run: datasets (:mod:`.datasets`), how the training set is split across
workers (:mod:`.partition`), the models (:mod:`.models`) and a model's parameters as one flat
vector (:mod:`.flat`)."""
