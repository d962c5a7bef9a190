"""vehicle_bridge: the ROS 2 node that pushes 1 Hz telemetry snapshots to the aggregator."""
