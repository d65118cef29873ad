"""What a worker prepares before it takes its first message."""

from __future__ import annotations

import gc

from scattergate import orgdomain, serve


def test_start_up_loads_the_public_suffix_list_before_the_first_message() -> None:
    orgdomain._psl.cache_clear()
    orgdomain.organizational_domain.cache_clear()
    thresholds = gc.get_threshold()
    try:
        serve._settle_garbage_collector()
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    assert orgdomain._psl.cache_info().currsize == 1
