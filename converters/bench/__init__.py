"""`bench`: speed, size and memory of every artifact of a bundle, beside PyTorch and onnxruntime fp32, in one run.

    command.py     the `bench` command
    scale_command.py the `search-scale` command (core: no converter libraries)
    run.py         one run: what is measured in which order; writes bench.json and bench.md
    tower_speed.py latency, throughput, size and memory of one tower of one artifact
    timing.py      the measurement loop and its repetition budgets
    processes.py   fresh processes per measurement; resident-memory peaks
    worker.py      the entry point of those processes
    flops.py       a graph's FLOPs and the machine's matmul peak
    compare.py     ratios against PyTorch and onnxruntime fp32, FLOP rates
    conversion.py  the conversion's wall time and memory, step by step
    search.py      indexing throughput and top-10 latency at scale
    goals.py       the goals, met or missed by how much
    machine.py     load and library versions (the CPU: converters/cpu.py)
    report.py      the results as dataclasses (bench.json)
    markdown.py    bench.md
"""
