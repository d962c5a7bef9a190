"""`make demo`: an aggregator, a simulated fleet of real ROS 2 processes and, where installed, Prometheus.

Not part of either side of the product: it only starts them. `python -m tvm_observability.demo`.
"""
