"""The bucketing paper's own numbers, for the reports' side-by-side columns, and ByzFL's
worst-case heat maps beside the worst-case tables of ``worstcase_byzfl`` (:data:`WORST`).

Source: ``shared/PAPER_TABLES.md`` (the committed result files of the paper's official code,
epfml/byzantine-robust-noniid-optimizer): MNIST, the small CNN, batch 32, lr 0.01, heavy-ball
worker momentum, test accuracy (%) averaged over the last 5 evaluations (every 30 iterations),
mean over 3 seeds. Each table maps a cell of an experiment (its config values) to the paper's
number; :func:`paper_value` looks one up. Cells the paper did not run (NNM, TrMean, our extra
rules) have none. ByzFL's numbers are read off its published heat maps (two digits).
"""
from __future__ import annotations

from typing import Any

__all__ = ["PAPER", "paper_value", "SOURCE", "WORST", "source_of"]

SOURCE = ("Karimireddy, He, Jaggi, ICLR 2022 (the bucketing paper), MNIST CNN, its official "
          "code's result files")

_ATTACKS = ("bitflip", "labelflip", "mimic", "ipm", "alie")

# T-A: no attack, long-tailed, n = 24, beta = 0, 4500 iterations. Columns: iid, non-iid,
# iid s=2, non-iid s=2.
_TA = {"mean": (98.79, 98.75, 98.80, 98.74), "krum": (97.95, 89.90, 98.35, 93.27),
       "cm": (97.72, 80.36, 98.26, 95.59), "rfa": (98.62, 82.60, 98.75, 97.34),
       "cclip": (98.78, 98.78, 98.79, 98.75)}
# T-B: mimic, n = 25, f = 5, beta = 0, 600 iterations; the same columns.
_TB = {"mean": (93.20, 92.73, 93.17, 92.67), "krum": (90.36, 37.33, 91.64, 53.15),
       "cm": (90.80, 64.27, 91.91, 78.60), "rfa": (92.92, 78.93, 93.00, 91.17),
       "cclip": (93.16, 91.53, 93.17, 92.56)}
# T-C: non-iid, n = 25, f = 5, 600 iterations: (rule, beta) -> per attack (s = 0, s = 2).
_TC = {
    ("krum", 0.0): ((27.5, 29.9), (1.0, 23.1), (38.1, 54.6), (36.6, 55.6), (77.3, 62.7)),
    ("cm", 0.0): ((37.6, 51.1), (33.5, 52.4), (68.7, 79.3), (49.8, 65.4), (75.3, 89.0)),
    ("rfa", 0.0): ((69.7, 88.3), (91.1, 92.2), (79.5, 91.6), (16.3, 90.9), (63.1, 91.7)),
    ("cclip", 0.0): ((75.5, 92.0), (91.8, 92.5), (92.1, 93.0), (92.3, 93.0), (91.5, 91.9)),
    ("krum", 0.9): ((10.0, 27.0), (1.1, 43.8), (37.0, 64.6), (10.0, 41.6), (11.4, 10.2)),
    ("cm", 0.9): ((44.6, 60.3), (46.7, 71.5), (54.6, 82.7), (32.1, 59.9), (9.9, 39.2)),
    ("rfa", 0.9): ((84.2, 97.0), (96.2, 97.6), (86.4, 97.3), (11.3, 96.2), (11.4, 68.8)),
    ("cclip", 0.9): ((97.8, 97.9), (97.8, 97.9), (97.9, 97.9), (97.8, 97.9), (98.2, 98.1)),
}
# T-D: CClip under IPM, n = 53, non-iid: (beta, f, s) -> accuracy.
_TD = {(0.0, 5, 0): 92.9, (0.0, 5, 2): 93.4, (0.0, 5, 5): 93.5,
       (0.9, 5, 0): 98.0, (0.9, 5, 2): 98.0, (0.9, 5, 5): 98.0,
       (0.0, 1, 2): 93.7, (0.0, 6, 2): 93.4, (0.0, 12, 2): 92.9,
       (0.9, 1, 2): 98.1, (0.9, 6, 2): 98.0, (0.9, 12, 2): 97.9}


def _bucket_size(pre: Any) -> int | None:
    """s of a ``--pre`` value the paper ran: 0 for none, s for ``bucketing:s``; None otherwise."""
    if pre in (None, "", "none"):
        return 0
    if isinstance(pre, str) and pre.startswith("bucketing:") and "," not in pre:
        try:
            return int(pre.split(":", 1)[1])
        except ValueError:
            return None
    return None


def _noniid(partition: Any) -> bool | None:
    if partition in ("iid", "longtail"):
        return False
    if partition in ("noniid", "longtail:noniid"):
        return True
    return None


def _two_by_two(table: dict, cell: dict[str, Any]) -> float | None:
    row = table.get(cell.get("agg"))
    s, noniid = _bucket_size(cell.get("pre")), _noniid(cell.get("partition"))
    if row is None or s not in (0, 2) or noniid is None:
        return None
    return row[(2 if s == 2 else 0) + (1 if noniid else 0)]


def _noattack(cell: dict[str, Any]) -> float | None:
    return _two_by_two(_TA, cell) if cell.get("num_byzantine", 0) == 0 else None


def _mimic(cell: dict[str, Any]) -> float | None:
    return _two_by_two(_TB, cell) if cell.get("attack") == "mimic" else None


def _attacks(cell: dict[str, Any]) -> float | None:
    row = _TC.get((cell.get("agg"), float(cell.get("momentum", -1))))
    s = _bucket_size(cell.get("pre"))
    if row is None or s not in (0, 2) or cell.get("attack") not in _ATTACKS:
        return None
    return row[_ATTACKS.index(cell["attack"])][1 if s == 2 else 0]


def _cclip_n53(cell: dict[str, Any]) -> float | None:
    if cell.get("agg") != "cclip" or cell.get("attack") != "ipm":
        return None
    return _TD.get((float(cell.get("momentum", -1)), cell.get("num_byzantine"),
                    _bucket_size(cell.get("pre"))))


def _cclip_tau(cell: dict[str, Any]) -> float | None:
    """T-C's CClip row at the paper's radius tau = 10 (no number for the others)."""
    return _attacks(cell) if cell.get("cclip_tau") == 10.0 else None


#: experiment name -> (cell config -> the paper's number or None)
PAPER = {"noattack": _noattack, "mimic": _mimic, "attacks": _attacks, "attacks_cnn": _attacks,
         "cclip_n53": _cclip_n53, "cclip_tau": _cclip_tau}

BYZFL_SOURCE = ("ByzFL's benchmark heat maps (LPD-EPFL/byzfl at 69bd1ac, docs/_static/"
                "plots_example/TM_test_heatmap.png, GM_test_heatmap.png): MNIST, its CNN, 10 "
                "honest clients, Clipping (C = 2) + NNM, lr 0.1, momentum 0.9, 800 steps, 3 "
                "seeds; the least over SignFlipping, Opt-IPM and Opt-ALIE of the highest "
                "seed-mean test accuracy")
# ByzFL's worst case (%): (rule, extreme non-iid) -> f = 1, 2, 3, 4 (its heat maps' 0.98 ...)
_BYZFL = {("trmean", False): (98, 98, 98, 98), ("trmean", True): (87, 61, 26, 21),
          ("rfa", False): (98, 98, 98, 97), ("rfa", True): (87, 56, 26, 27)}


def _byzfl(cell: dict[str, Any]) -> float | None:
    agg = "rfa" if cell.get("agg") == "gm" else cell.get("agg")
    noniid = {"iid": False, "noniid": True}.get(cell.get("partition"))
    row, f = _BYZFL.get((agg, noniid)), cell.get("num_byzantine")
    if row is None or f not in (1, 2, 3, 4) or cell.get("pre") != "clip:2,nnm":
        return None
    return float(row[f - 1])


#: experiment name -> (a worst-case cell's config -> the reference's worst case or None)
WORST = {"worstcase_byzfl": _byzfl}
_SOURCES = {"worstcase_byzfl": BYZFL_SOURCE}


def source_of(experiment: str) -> str:
    """Where the numbers beside ``experiment``'s come from."""
    return _SOURCES.get(experiment, SOURCE)


def paper_value(experiment: str, cell: dict[str, Any]) -> float | None:
    """The paper's accuracy (%) for ``cell`` (a run's flat config) of ``experiment``, or None."""
    fn = PAPER.get(experiment)
    return fn(cell) if fn else None
