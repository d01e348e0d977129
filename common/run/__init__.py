"""Running an experiment: the configuration and the command line (:mod:`.config`, :mod:`.flags`,
:mod:`.cli`), the learning problem built from it (:mod:`.problem`), learning-rate and Byzantine
schedules (:mod:`.schedule`), run-directory files (:mod:`.io`), plugins (:mod:`.plugins`), the
Python API (:mod:`.api`) and the process settings read before torch loads (:mod:`.startup`).

This package's ``__init__`` imports nothing: ``import common.run.startup`` must run before
torch is imported."""
