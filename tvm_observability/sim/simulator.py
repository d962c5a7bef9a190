"""vehicle_simulator node: publishes a robot's battery, GPS, odometry, status, diagnostics and
sensor streams at realistic rates, with parameters that inject faults. Dynamics live in
sim.dynamics; this module is rclpy wiring only."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import BatteryState, Image, LaserScan, NavSatFix, NavSatStatus
from std_msgs.msg import String

from . import dynamics

SENSORS = ("lidar", "camera", "imu", "gps")
_PARAMETERS: dict[str, Any] = {
    "origin_lat": 52.5200,
    "origin_lon": 13.4050,
    "origin_alt": 34.0,
    "radius_m": 40.0,
    "speed_m_s": 1.2,
    "initial_battery": 0.8,
    "drain_per_s": 0.0005,
    "charge_per_s": 0.004,
    "fault_after_s": 0.0,
    "fault_stop_sensor": "",
    "fault_error_sensor": "",
    "fault_error_code": "",
    "fault_error_period_s": 0.0,
    "fault_low_battery": 0.0,
    "fault_frozen_gps": False,
    "fault_leave_area_m": 0.0,
}
_RATES_HZ = {"odom": 20.0, "scan": 10.0, "image": 15.0, "fix": 5.0, "slow": 1.0}
_IMAGE_W, _IMAGE_H = 64, 48


class VehicleSimulator(Node):
    def __init__(self) -> None:
        super().__init__("vehicle_simulator")
        # dynamic_typing: `-p fault_after_s:=3` arrives as an integer; the values are converted below.
        any_type = ParameterDescriptor(dynamic_typing=True)
        p = {name: self.declare_parameter(name, default, any_type).value for name, default in _PARAMETERS.items()}
        self.p = p
        hold = float(p["fault_low_battery"]) > 0
        self.settings = dynamics.DynamicsSettings(
            speed_m_s=float(p["speed_m_s"]),
            radius_m=float(p["radius_m"]),
            drain_per_s=float(p["drain_per_s"]),
            charge_per_s=float(p["charge_per_s"]),
            hold_battery=hold,
        )
        initial = float(p["fault_low_battery"]) if hold else float(p["initial_battery"])
        self.state = dynamics.VehicleState(battery=initial)
        self.started = time.monotonic()
        self.last_step = self.started
        self.frozen_fix: NavSatFix | None = None
        self.pub_battery = self.create_publisher(BatteryState, "battery_state", 10)
        self.pub_fix = self.create_publisher(NavSatFix, "fix", 10)
        self.pub_odom = self.create_publisher(Odometry, "odom", 10)
        self.pub_status = self.create_publisher(String, "vehicle_status", 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_scan = self.create_publisher(LaserScan, "scan", qos_profile_sensor_data)
        self.pub_image = self.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
        self.scan = _laser_scan()
        self.image = _image()
        self.create_timer(1.0 / _RATES_HZ["odom"], self._on_odom)
        self.create_timer(1.0 / _RATES_HZ["scan"], self._on_scan)
        self.create_timer(1.0 / _RATES_HZ["image"], self._on_image)
        self.create_timer(1.0 / _RATES_HZ["fix"], self._on_fix)
        self.create_timer(1.0 / _RATES_HZ["slow"], self._on_slow)
        faults = {k: v for k, v in p.items() if k.startswith("fault_") and v}
        self.get_logger().info(f"simulating a vehicle near {p['origin_lat']}, {p['origin_lon']}; faults: {faults}")

    def _faulty(self) -> bool:
        return time.monotonic() - self.started >= float(self.p["fault_after_s"])

    def _stopped(self, sensor: str) -> bool:
        return self.p["fault_stop_sensor"] == sensor and self._faulty()

    def _stamp(self, header: Any, frame: str) -> None:
        header.stamp = self.get_clock().now().to_msg()
        header.frame_id = frame

    def _on_odom(self) -> None:
        now = time.monotonic()
        self.state = dynamics.step(self.state, now - self.last_step, self.settings)
        self.last_step = now
        x, y, yaw = dynamics.circle_pose(self.state.distance_m, self.settings.radius_m)
        msg = Odometry()
        self._stamp(msg.header, "odom")
        msg.child_frame_id = "base_link"
        msg.pose.pose.position.x, msg.pose.pose.position.y = x, y
        q = msg.pose.pose.orientation
        q.x, q.y, q.z, q.w = dynamics.yaw_quaternion(yaw)
        msg.twist.twist.linear.x = self.settings.speed_m_s if self.state.mode == "on_mission" else 0.0
        self.pub_odom.publish(msg)

    def _on_scan(self) -> None:
        if not self._stopped("lidar"):
            self._stamp(self.scan.header, "laser")
            self.pub_scan.publish(self.scan)

    def _on_image(self) -> None:
        if not self._stopped("camera"):
            self._stamp(self.image.header, "camera")
            self.pub_image.publish(self.image)

    def _on_fix(self) -> None:
        if self._stopped("gps"):
            return
        if self.p["fault_frozen_gps"] and self._faulty() and self.frozen_fix is not None:
            self.pub_fix.publish(self.frozen_fix)  # a hung driver repeating its last message, old stamp and all
            return
        x, y, _ = dynamics.circle_pose(self.state.distance_m, self.settings.radius_m)
        if float(self.p["fault_leave_area_m"]) > 0:  # drives east, away from its route, once the fault starts
            elapsed = time.monotonic() - self.started - float(self.p["fault_after_s"])
            x += dynamics.drift_m(elapsed, self.settings.speed_m_s, float(self.p["fault_leave_area_m"]))
        lat, lon = dynamics.local_to_geo(float(self.p["origin_lat"]), float(self.p["origin_lon"]), x, y)
        msg = NavSatFix()
        self._stamp(msg.header, "gps")
        msg.status.status = NavSatStatus.STATUS_FIX
        msg.status.service = NavSatStatus.SERVICE_GPS
        msg.latitude, msg.longitude, msg.altitude = lat, lon, float(self.p["origin_alt"])
        msg.position_covariance_type = NavSatFix.COVARIANCE_TYPE_UNKNOWN
        self.frozen_fix = msg
        self.pub_fix.publish(msg)

    def _on_slow(self) -> None:
        battery = BatteryState()
        self._stamp(battery.header, "battery")
        battery.percentage = self.state.battery
        battery.voltage = dynamics.battery_voltage(self.state.battery)
        battery.capacity = battery.design_capacity = 40.0
        battery.charge = 40.0 * self.state.battery
        battery.current = math.nan
        charging = self.state.mode == "charging"
        battery.power_supply_status = (
            BatteryState.POWER_SUPPLY_STATUS_CHARGING if charging else BatteryState.POWER_SUPPLY_STATUS_DISCHARGING
        )
        battery.present = True
        self.pub_battery.publish(battery)
        self.pub_status.publish(String(data=self.state.mode))
        self.pub_diag.publish(self._diagnostics())

    def _diagnostics(self) -> DiagnosticArray:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        elapsed = time.monotonic() - self.started - float(self.p["fault_after_s"])
        for sensor in SENSORS:
            status = DiagnosticStatus(name=f"{sensor}: driver", hardware_id=f"sim_{sensor}", level=DiagnosticStatus.OK)
            status.message = "running"
            if (
                self.p["fault_error_sensor"] == sensor
                and elapsed >= 0
                and dynamics.error_phase(elapsed, float(self.p["fault_error_period_s"]))
            ):
                status.level = DiagnosticStatus.ERROR
                status.message = "injected fault"
                if self.p["fault_error_code"]:
                    status.values = [KeyValue(key="error_code", value=str(self.p["fault_error_code"]))]
            array.status.append(status)
        return array


def _laser_scan() -> LaserScan:
    scan = LaserScan()
    scan.angle_min, scan.angle_max = -math.pi, math.pi
    scan.angle_increment = 2 * math.pi / 360
    scan.range_min, scan.range_max = 0.1, 30.0
    scan.scan_time = 0.1
    scan.ranges = [5.0 + math.sin(i / 10.0) for i in range(360)]
    return scan


def _image() -> Image:
    image = Image()
    image.height, image.width = _IMAGE_H, _IMAGE_W
    image.encoding = "rgb8"
    image.step = 3 * _IMAGE_W
    image.data = bytes(range(256)) * (3 * _IMAGE_W * _IMAGE_H // 256)
    return image


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node: VehicleSimulator | None = None
    try:
        node = VehicleSimulator()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
