"""The launch files' exit policy for the bridge: a crash is respawned after a delay, invalid parameters stop the
launch with a non-zero exit and a clear message (tvm_observability/bridge/launch_policy.py).

The policy itself is a pure function, tested directly. The launch files are read as Python source (no registry
ships launch or launch_ros, so they cannot be imported here): the bridge node must be declared with respawn and
the policy's delay, and its OnProcessExit handler, taken from the launch file and run as written, must stop the
launch exactly where the policy says. A real bridge process then shows that the exit codes the policy tells
apart are the ones the bridge exits with. What `ros2 launch` itself does with respawn and a failing handler is
the launch_testing module's ground (test_vehicle_bridge_launch.py) and launch_policy.py's documented premise.
"""

from __future__ import annotations
import __future__

import ast
import signal
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bridge_support import BridgeProcess, free_port, write_bridge_params
from support import REPO, wait_for

from tvm_observability.bridge.launch_policy import RESPAWN_DELAY_S, BridgeConfigurationError, check_bridge_exit
from tvm_observability.bridge.params import EXIT_BAD_PARAMETERS

LAUNCH = REPO / "launch"
BRIDGE_LAUNCH = LAUNCH / "vehicle_bridge.launch.py"
SIM_LAUNCH = LAUNCH / "sim_vehicle.launch.py"
CRASHES = [0, 1, -signal.SIGSEGV, -signal.SIGKILL, -signal.SIGABRT]
"""Exits the policy leaves to respawn: a clean stop by the launch, an unexpected error, deaths by signal."""


def test_invalid_parameters_stop_the_launch_with_the_reason():
    with pytest.raises(BridgeConfigurationError) as info:
        check_bridge_exit(EXIT_BAD_PARAMETERS, "vehicle_bridge-2")
    message = str(info.value)
    assert message.startswith("vehicle_bridge-2 exited with code 2: its parameters are invalid")
    assert "not respawning" in message


@pytest.mark.parametrize("returncode", CRASHES)
def test_other_exits_are_left_to_respawn(returncode):
    assert check_bridge_exit(returncode, "vehicle_bridge-1") is None


# --- the launch files, read as source ---------------------------------------------------------------------------


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _function(module: ast.Module, name: str) -> ast.FunctionDef:
    found = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(found) == 1, f"{name}() is not defined once at module level"
    return found[0]


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    """Every call of `name` or `<anything>.name` in `tree`."""
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and (
            (isinstance(n.func, ast.Name) and n.func.id == name)
            or (isinstance(n.func, ast.Attribute) and n.func.attr == name)
        )
    ]


def _keywords(call: ast.Call) -> dict[str, ast.expr]:
    return {k.arg: k.value for k in call.keywords if k.arg is not None}


def _returned_list(function: ast.FunctionDef) -> list[ast.expr]:
    """The elements of the list `function` returns (directly, or as LaunchDescription([...]))."""
    (returned,) = [n.value for n in ast.walk(function) if isinstance(n, ast.Return) and n.value is not None]
    if isinstance(returned, ast.Call):
        (returned,) = returned.args
    assert isinstance(returned, ast.List), ast.unparse(returned)
    return returned.elts


def _policy_imports(module: ast.Module) -> dict[str, str]:
    """Names the launch file imports from this package: name -> module."""
    return {
        alias.asname or alias.name: node.module
        for node in module.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tvm_observability")
        for alias in node.names
    }


def _load_function(path: Path, name: str) -> Callable[..., Any]:
    """Module-level function `name` of a launch file, compiled as written together with the file's imports from
    this package (what it calls of the policy), without the launch imports no registry ships."""
    module = _parse(path)
    body: list[ast.stmt] = [
        node
        for node in module.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tvm_observability")
    ]
    body.append(_function(module, name))
    flags = __future__.annotations.compiler_flag  # annotations name launch types: never evaluated
    code = compile(ast.Module(body=body, type_ignores=[]), str(path), "exec", flags=flags, dont_inherit=True)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the shipped launch file's own code
    function: Callable[..., Any] = namespace[name]
    return function


def _bridge_node_call() -> ast.Call:
    nodes = _bridge_nodes(_parse(BRIDGE_LAUNCH))
    assert len(nodes) == 1, "vehicle_bridge.launch.py must declare the vehicle_bridge Node once"
    return nodes[0]


def _bridge_nodes(tree: ast.AST) -> list[ast.Call]:
    return [c for c in _calls(tree, "Node") if _literal(_keywords(c).get("executable")) == "vehicle_bridge"]


def _literal(node: ast.expr | None) -> Any:
    return ast.literal_eval(node) if node is not None else None


def test_the_bridge_node_is_respawned_after_the_policys_delay():
    keywords = _keywords(_bridge_node_call())
    assert _literal(keywords.get("respawn")) is True, "the bridge Node must have respawn=True"
    delay = keywords.get("respawn_delay")
    assert isinstance(delay, ast.Name) and delay.id == "RESPAWN_DELAY_S", "respawn_delay must be the policy's"
    imports = _policy_imports(_parse(BRIDGE_LAUNCH))
    assert imports.get("RESPAWN_DELAY_S") == "tvm_observability.bridge.launch_policy"
    assert RESPAWN_DELAY_S > 0  # a crash loop must not spin a core


def test_the_bridge_exit_handler_is_registered_on_the_bridge_node():
    actions = _function(_parse(BRIDGE_LAUNCH), "bridge_actions")
    assigned = {
        target.id: node.value
        for node in ast.walk(actions)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    (handler,) = _calls(actions, "OnProcessExit")
    keywords = _keywords(handler)
    target = keywords.get("target_action")
    assert isinstance(target, ast.Name), "OnProcessExit must target the bridge node"
    node = assigned.get(target.id)
    assert isinstance(node, ast.Call) and ast.unparse(node.func) == "bridge_node", ast.dump(actions)
    declared = _bridge_nodes(_function(_parse(BRIDGE_LAUNCH), "bridge_node"))
    assert [ast.unparse(c) for c in declared] == [ast.unparse(_bridge_node_call())], "bridge_node() declares it"
    on_exit = keywords.get("on_exit")
    assert isinstance(on_exit, ast.Name) and on_exit.id == "_on_bridge_exit"
    (registered,) = _calls(actions, "RegisterEventHandler")
    assert registered.args == [handler], "the handler must be registered"
    returned = [ast.unparse(e) for e in _returned_list(actions)]
    assert target.id in returned and ast.unparse(registered) in returned, returned
    generate = _function(_parse(BRIDGE_LAUNCH), "generate_launch_description")
    description = [ast.unparse(e) for e in _returned_list(generate)]
    assert "*bridge_actions()" in description, description


def test_the_launch_files_exit_handler_stops_the_launch_on_invalid_parameters_only():
    on_exit = _load_function(BRIDGE_LAUNCH, "_on_bridge_exit")
    event = SimpleNamespace(returncode=EXIT_BAD_PARAMETERS, process_name="vehicle_bridge-1")  # ProcessExited's fields
    with pytest.raises(BridgeConfigurationError, match=r"^vehicle_bridge-1 exited with code 2: its parameters are"):
        on_exit(event, None)
    for returncode in CRASHES:
        assert on_exit(SimpleNamespace(returncode=returncode, process_name="vehicle_bridge-1"), None) is None


def test_the_simulated_vehicle_launch_applies_the_same_policy():
    """sim_vehicle.launch.py takes the bridge and its handler from vehicle_bridge.launch.py, in the same launch
    description as the simulator, so a configuration error stops the simulator too."""
    module = _parse(SIM_LAUNCH)
    loader = _function(module, "_bridge_launch")
    assert "vehicle_bridge.launch.py" in {_literal(c) for c in ast.walk(loader) if isinstance(c, ast.Constant)}
    generate = _function(module, "generate_launch_description")
    assert any(
        isinstance(n, ast.Assign) and ast.unparse(n) == "bridge = _bridge_launch()" for n in ast.walk(generate)
    ), ast.unparse(generate)
    elements = [ast.unparse(e) for e in _returned_list(generate)]
    assert "*bridge.bridge_actions()" in elements and "simulator" in elements, elements
    assert not _bridge_nodes(module), "sim_vehicle.launch.py must not declare a bridge of its own (no policy)"


# --- a real bridge: the exit codes the policy tells apart --------------------------------------------------------


@pytest.mark.ros
def test_a_bridge_with_an_invalid_parameter_exits_with_the_code_that_stops_the_launch(ros_env):
    bridge = BridgeProcess(ros_env, None, "vehicle_id:=V1", "aggregator_url:=ftp://nowhere").start()
    try:
        returncode = bridge.wait(60)
    finally:
        bridge.__exit__()
    assert returncode == EXIT_BAD_PARAMETERS, bridge.output
    assert "aggregator_url: must be an http:// or https:// URL" in bridge.output
    with pytest.raises(BridgeConfigurationError):
        check_bridge_exit(returncode, "vehicle_bridge-1")


@pytest.mark.ros
def test_a_crashed_bridge_exits_with_a_code_that_is_respawned(ros_env, tmp_path):
    params = write_bridge_params(tmp_path / "p.yaml")
    url = f"aggregator_url:=http://127.0.0.1:{free_port()}"  # nobody listens: the bridge retries, runs on
    with BridgeProcess(ros_env, params, "vehicle_id:=V1", url) as bridge:
        wait_for(lambda: "pushing to" in bridge.output, 60, what="the bridge to run")
        returncode = bridge.kill()
    assert returncode == -signal.SIGKILL, bridge.output
    assert check_bridge_exit(returncode, "vehicle_bridge-1") is None
