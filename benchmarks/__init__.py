"""densepref benchmarks: one module per question, each printing a table and writing a JSON file.

    python -m benchmarks.run_all --out benchmarks/results/      # everything, then README tables
    python -m benchmarks.throughput --out DIR [--quick]         # one question

See benchmarks/README.md for the questions, the methods and the latest figures.
"""
