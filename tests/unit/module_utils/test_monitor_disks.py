"""Copied disks in a migration's job samples: read from libvirt's stats and counted in its progress."""

from ansible_collections.hvfleet.drain.plugins.module_utils.engine.monitor import JOB_UNBOUNDED, sample_from_stats

MIB = 2**20


def test_disk_fields_are_read_from_job_stats():
    s = sample_from_stats({"type": JOB_UNBOUNDED, "disk_total": 10 * MIB, "disk_processed": 4 * MIB,
                           "disk_remaining": 6 * MIB}, 1.0)
    assert (s.disk_total, s.disk_processed, s.disk_remaining) == (10 * MIB, 4 * MIB, 6 * MIB)


def test_a_disk_copy_before_memory_counts_as_started_and_as_progress():
    s = sample_from_stats({"type": JOB_UNBOUNDED, "disk_total": 10 * MIB, "disk_processed": 1 * MIB,
                           "disk_remaining": 9 * MIB, "memory_total": 256 * MIB, "memory_remaining": 256 * MIB}, 2.0)
    assert s.started
    assert s.total_bytes == 266 * MIB and s.moved_bytes == 1 * MIB and s.remaining_bytes == 265 * MIB


def test_libvirts_data_totals_win_when_given_they_include_the_disks():
    s = sample_from_stats({"type": JOB_UNBOUNDED, "data_total": 300 * MIB, "data_processed": 100 * MIB,
                           "data_remaining": 200 * MIB, "disk_total": 44 * MIB, "memory_total": 256 * MIB}, 3.0)
    assert (s.total_bytes, s.moved_bytes, s.remaining_bytes) == (300 * MIB, 100 * MIB, 200 * MIB)


def test_without_disks_the_totals_are_memory():
    s = sample_from_stats({"type": JOB_UNBOUNDED, "memory_total": 256 * MIB, "memory_processed": 56 * MIB,
                           "memory_remaining": 200 * MIB}, 1.0)
    assert (s.total_bytes, s.moved_bytes, s.remaining_bytes) == (256 * MIB, 56 * MIB, 200 * MIB)
    assert s.to_dict()["disk_total"] == 0
