"""Election coding for signSGD (Sohn, Han, Choi, Moon, NeurIPS 2020): the allocation codes, votes
and their exact verification (:mod:`.codes`), the search for codes of least redundancy
(:mod:`.search`), bit-packed votes (:mod:`.bitpack`) and the command line (:mod:`.cli`,
``python -m common.coding``)."""
from common.coding.codes import *  # noqa: F403
from common.coding.codes import __all__ as _codes
from common.coding.search import SearchResult, search, search_code

__all__ = [*_codes, "SearchResult", "search", "search_code"]
