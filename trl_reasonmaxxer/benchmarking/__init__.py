"""The benchmark harness, GRPO against ReasonMaxxer: :mod:`.compare` runs it, :mod:`.report` is its pure arithmetic
(splits, headline ratio, seed pooling, table, curve plot) and :mod:`.ledger` counts each method's cost."""
