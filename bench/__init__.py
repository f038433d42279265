"""sluice benchmarks: same-run ratios against HAProxy, NGINX and "direct", entry point: `python -m bench.run`.

Rules (MEASURE.md): alternating rounds, medians, the load balancer's own CPU per unit of work,
LB pinned to core 0, generators and backends to core 1, everything on 127.0.0.0/8 and bounded.
"""
