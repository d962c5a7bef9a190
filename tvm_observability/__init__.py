"""tvm_observability: fleet telemetry from ROS 2 vehicles to Prometheus."""

__version__ = "0.1.0"
