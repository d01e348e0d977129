"""The wire: everything rank 0 and the worker ranks must agree on, imported by both sides
(``master/`` and ``worker/`` never import each other). Commands, tags and the rank layout
(:mod:`.commands`), the message formats of the protocols (:mod:`.formats`: float32 rows and
bit-packed votes), the DiverseFL samples (:mod:`.samples`) and attack info and state as numbers
(:mod:`.codecs`). Nothing here is pickled: every message is a raw numeric buffer whose size the
receiver computed."""
