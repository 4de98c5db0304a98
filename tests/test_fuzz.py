"""A short round of the fuzz harness (`tests/fuzzing.py`; `make fuzz` runs at least 20,000 cases):
mutated genuine files through every reader of outside bytes, each ending in a result or a clear
error naming the file, never a crash of the caller, a hang or an unnamed failure."""

import fuzzing


def test_every_reader_survives_a_short_fuzz_round(real_data, tmp_path):
    harness = fuzzing.Harness(real_data, tmp_path / "fuzz", seed=0)
    try:
        tally = fuzzing.run(harness, {k: 40 for k in fuzzing.SHARES}, seed=0)
    finally:
        harness.close()
    print(tally.table())
    assert set(tally.counts) == set(fuzzing.SHARES), "every reader ran"
    for reader, counts in tally.counts.items():
        assert sum(counts.values()) >= 40, reader
    # the mutations reach both ends: some inputs still read, some are refused with a reason
    assert (
        tally.counts["nih_boxes"]["clear error"] and tally.counts["dicom_conversion"]["converted"]
    )
    assert tally.counts["upload_endpoint"]["200"] and tally.counts["upload_endpoint"]["400"]
