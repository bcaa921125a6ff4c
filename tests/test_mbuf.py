import os

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


@pytest.fixture
def memory_config():
    """Restore the default pool memory (plain mapping, no cap) after the test."""
    from pmd.mbuf import configure_memory
    yield configure_memory
    configure_memory()


def test_memory_cap_refuses_a_larger_pool(memory_config) -> None:
    """``-m MB``: a pool above the cap is one clear error, nothing mapped."""
    memory_config(limit_mb=1)
    with pytest.raises(ValueError, match=r"the mbuf pool needs 3 MB but -m allows 1 MB"):
        create_pool(1024, 2176)
    assert create_pool(256, 2176).size == 256  # 557 kB: under the cap


def test_huge_dir_must_be_hugetlbfs(memory_config, tmp_path) -> None:
    memory_config(huge_dir=str(tmp_path))
    with pytest.raises(ValueError, match="is not a hugetlbfs mount"):
        create_pool(16)


def test_pool_in_a_hugetlbfs_file(memory_config, tmp_path) -> None:
    """``--huge-dir``: the pool's bytes are a hugetlbfs file's pages (unlinked
    at once: nothing is left in the directory), usable as any pool."""
    from apps.bench.hugepages import Hugepages, HugepagesUnavailable

    try:
        huge = Hugepages(4, parent=str(tmp_path))
    except HugepagesUnavailable as e:
        pytest.skip(str(e))
    try:
        memory_config(huge_dir=huge.dir)
        pool = create_pool(1024, 2176)  # 2.2 MB: two 2 MiB pages
        assert os.listdir(huge.dir) == []
        with open("/proc/self/smaps") as f:  # the mapping is the hugetlbfs file's (deleted)
            assert any("vhostpci_mbuf_" in line and "(deleted)" in line for line in f)
        bufs = np.zeros(32, np.int32)
        assert alloc_bulk(pool, bufs, 32)
        pool.data[-1] = 0xAB  # the last byte of the last buffer: the whole pool is mapped
        assert pool.data[-1] == 0xAB
        free_bulk(pool, bufs, 32)
        assert pool.available() == 1024
        del pool, bufs
    finally:
        huge.close()
