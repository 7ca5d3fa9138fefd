"""The job machinery: the job loop (:mod:`~salbench.harness.runner`), the command line
(:mod:`~salbench.harness.cli`), config schemas, registries, result storage, timing, the
regression gate and the cross-checks against captum / pytorch-grad-cam."""
