"""Speed benchmarks of salbench against its peers (outside the test suite): ``python -m benchmarks.run``."""
