"""edge-bench harness: the edge-locate JSON contract, metrics, suites and the report."""
