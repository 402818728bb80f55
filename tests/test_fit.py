from flow.fit import slice_bounds


def test_slices_cover_the_batch_in_order_and_differ_by_at_most_one():
    for batch_size in range(0, 20):
        for devices in range(1, 5):
            bounds = slice_bounds(batch_size, devices)
            assert len(bounds) == devices and bounds[0][0] == 0 and bounds[-1][1] == batch_size
            assert all(stop == next_start for (_, stop), (next_start, _) in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
