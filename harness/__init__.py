"""salbench: evaluation and benchmarking harness for visual explanations of CNN classifiers."""
__version__ = "0.1.0"
