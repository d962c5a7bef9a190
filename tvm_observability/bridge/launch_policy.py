"""What the shipped launch files do when a vehicle_bridge process exits (pure: no launch import, tested directly).

A robot's policy: a crash is respawned after RESPAWN_DELAY_S, forever (the bridge must come back by itself, and
the delay keeps a crash loop from spinning a core); a configuration error (exit code EXIT_BAD_PARAMETERS) is not
something a restart can fix, so the launch stops, every process with it, and `ros2 launch` exits non-zero with a
message saying so. A clean exit (0) happens when the launch shuts the bridge down.

On Humble, `respawn` restarts whatever the exit code, `respawn_max_retries` does not exist and a `Shutdown`
action makes `ros2 launch` exit 0; only an exception raised from an `OnProcessExit` handler fails the launch
(its run loop logs "Caught exception in launch", shuts down and returns 1), on Humble, Jazzy and Kilted alike.
The handler runs before the respawn delay ends, so the shutdown it causes also cancels the respawn.
"""

from __future__ import annotations

from .params import EXIT_BAD_PARAMETERS

RESPAWN_DELAY_S = 5.0
"""Seconds between a crash of the bridge and its restart."""


class BridgeConfigurationError(RuntimeError):
    """Raised from the launch's OnProcessExit handler to stop the launch with a non-zero exit code."""


def check_bridge_exit(returncode: int, process_name: str) -> None:
    """The launch's reaction to `process_name` exiting with `returncode`: return to let respawn restart it (after
    RESPAWN_DELAY_S), or raise BridgeConfigurationError to stop the launch and fail it with the reason."""
    if returncode == EXIT_BAD_PARAMETERS:
        raise BridgeConfigurationError(
            f"{process_name} exited with code {returncode}: its parameters are invalid (the problems are in its log "
            "above); not respawning it, stopping the launch. Fix the parameters or the params_file and launch again."
        )
