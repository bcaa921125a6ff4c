import numpy as np
import pytest

from pmd.mbuf import HEADROOM, alloc_bulk, create_pool, free_bulk


def test_alloc_is_all_or_nothing_and_free_restores():
    pool = create_pool(100)
    bufs = np.zeros(128, np.int32)
    assert alloc_bulk(pool, bufs, 60)
    assert pool.available() == 40
    assert len(set(bufs[:60].tolist())) == 60
    assert not alloc_bulk(pool, bufs[60:], 41)  # more than left: nothing taken
    assert pool.available() == 40
    free_bulk(pool, bufs, 60)
    assert pool.available() == 100


def test_alloc_resets_metadata():
    pool = create_pool(4)
    bufs = np.zeros(4, np.int32)
    assert alloc_bulk(pool, bufs, 4)
    pool.data_len[bufs] = 99
    pool.data_off[bufs] = 7
    free_bulk(pool, bufs, 4)
    assert alloc_bulk(pool, bufs, 4)
    assert (pool.data_len[bufs] == 0).all() and (pool.data_off[bufs] == HEADROOM).all()


def test_bad_pool_sizes_rejected():
    with pytest.raises(ValueError, match="positive"):
        create_pool(0)
    with pytest.raises(ValueError, match="data room"):
        create_pool(8, buf_size=HEADROOM)
