"""Simulated safety-button devices for testing the centre (device protocol v1 over MQTT).

See docs/simulator.md. The command is ``alarmcentre-sim``; from Python use
``Fleet`` (many devices), ``run_scenario`` (a scripted file) or ``press_once``.
"""

from .connection import BrokerAddress, SimulatorError, serials
from .device import DeviceBehaviour, SimDevice, press_once
from .fleet import Fleet
from .scenario import Scenario, ScenarioError, load_scenario, parse_scenario, run_scenario
from .stats import Console, Stats

__all__ = [
    "BrokerAddress",
    "Console",
    "DeviceBehaviour",
    "Fleet",
    "Scenario",
    "ScenarioError",
    "SimDevice",
    "SimulatorError",
    "Stats",
    "load_scenario",
    "parse_scenario",
    "press_once",
    "run_scenario",
    "serials",
]
