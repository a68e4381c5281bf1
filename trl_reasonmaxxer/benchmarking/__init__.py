"""The benchmark harness: GRPO against ReasonMaxxer (``compare``) and its cost ledger (``ledger``)."""
