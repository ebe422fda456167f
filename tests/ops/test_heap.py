"""What a served worker does to the collector once it has started."""

from __future__ import annotations

import gc

from chatstudio.main import YOUNG_GENERATION_THRESHOLD, settle_heap


def test_a_started_worker_freezes_its_start_up_objects_and_lets_the_young_generation_grow() -> None:
    threshold = gc.get_threshold()
    survivor: list[object] = [object()]  # alive before settling: frozen with the rest
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is survivor for o in gc.get_objects())  # frozen objects are out of the collector's sight
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, threshold[1], threshold[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
