"""Small helpers shared by data/, checkpoint/, engine/ and benchmarking/ (importing nothing else of the package)."""
