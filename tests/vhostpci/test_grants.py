"""Grant rows and their published tables (``pmd/guestmem/grants.py``): one
UPDATE added in place (``insert_published``) gives exactly the tables a
full rebuild (``merge_grants``) gives, whatever order the pages came in."""
from __future__ import annotations

import numpy as np

from pmd.guestmem.grants import G_GPA, G_IOVA, G_LAST, G_OFF, G_PERM, find_grant, insert_grant, insert_published, \
    merge_grants, overlaps
from pmd.guestmem.translate import PERM_RW

PAGE = 4096
CAP = 512


def _published(table, count):
    return table[: count[0]].copy()


def test_in_place_inserts_match_a_rebuild():
    rng = np.random.default_rng(7)
    for trial in range(20):
        grants = np.zeros((CAP, 5), np.uint64)
        gcount = np.zeros(1, np.int64)
        table = np.zeros((CAP, 4), np.uint64)
        tcount = np.zeros(2, np.int64)
        gpa_table = np.zeros((CAP, 4), np.uint64)
        gcount_t = np.zeros(2, np.int64)
        pages = rng.permutation(300)[:200]  # scattered and neighbouring pages, any order
        for p in pages:
            iova = np.uint64(int(p) * PAGE)
            last = iova + np.uint64(PAGE - 1)
            perm = np.uint64(rng.integers(1, 4) if trial % 2 else 3)  # mixed perms, or one perm (long merges)
            # gpas mostly follow the iovas (mergeable), sometimes not
            gpa = np.uint64(int(p) * PAGE + (0 if rng.random() < 0.8 else 1 << 30))
            assert not overlaps(grants, gcount, iova, last)
            assert insert_grant(grants, gcount, iova, last, iova, perm, gpa)
            assert overlaps(grants, gcount, iova, last) and overlaps(grants, gcount, last, last + np.uint64(1))
            assert find_grant(grants, gcount, iova, last, perm, gpa) >= 0
            insert_published(table, tcount, iova, last, iova, perm)
            insert_published(gpa_table, gcount_t, iova, last, gpa, np.uint64(PERM_RW))
            assert tcount[1] % 2 == 0 and gcount_t[1] % 2 == 0
        n = gcount[0]
        assert (np.diff(grants[:n, G_IOVA].astype(np.int64)) > 0).all(), "grant rows out of order"
        assert (grants[:n, G_LAST] - grants[:n, G_IOVA] == PAGE - 1).all() and (grants[:n, G_OFF] == grants[:n, G_IOVA]).all()
        ref_t, ref_g = np.zeros_like(table), np.zeros_like(gpa_table)
        nt, ng = merge_grants(grants, n, ref_t, ref_g)
        assert np.array_equal(_published(table, tcount), ref_t[:nt])
        assert np.array_equal(_published(gpa_table, gcount_t), ref_g[:ng])
        assert not table[nt:].any() and not gpa_table[ng:].any(), "a merged-away row left behind"
        assert set(grants[:n, G_PERM].tolist()) <= {1, 2, 3} and grants[:n, G_GPA].all() >= 0


def test_find_and_overlap_at_the_edges():
    grants = np.zeros((8, 5), np.uint64)
    gcount = np.zeros(1, np.int64)
    for page in (2, 5, 6):
        s = np.uint64(page * PAGE)
        insert_grant(grants, gcount, s, s + np.uint64(PAGE - 1), s, np.uint64(3), s)
    u = np.uint64
    assert not overlaps(grants, gcount, u(0), u(2 * PAGE - 1))
    assert overlaps(grants, gcount, u(2 * PAGE - 1), u(2 * PAGE))
    assert overlaps(grants, gcount, u(3 * PAGE - 1), u(3 * PAGE - 1))
    assert not overlaps(grants, gcount, u(3 * PAGE), u(5 * PAGE - 1))
    assert overlaps(grants, gcount, u(0), u(1 << 40))
    assert not overlaps(grants, gcount, u(7 * PAGE), u((1 << 64) - 1))
    assert find_grant(grants, gcount, u(5 * PAGE), u(6 * PAGE - 1), u(3), u(5 * PAGE)) == 1
    assert find_grant(grants, gcount, u(5 * PAGE), u(6 * PAGE - 1), u(1), u(5 * PAGE)) == -1
    assert find_grant(grants, gcount, u(4 * PAGE), u(5 * PAGE - 1), u(3), u(4 * PAGE)) == -1
