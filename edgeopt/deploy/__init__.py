"""The deploy road: compile per-target artifacts, validate them in their runtimes, report, bundle for devices."""

from edgeopt.deploy.bundle import BundleResult, read_bundle, run_on_device, score_bundle, write_bundle
from edgeopt.deploy.compile import CompileResult, compile_model
from edgeopt.deploy.devices import parse_device
from edgeopt.deploy.manifest import Manifest, read_manifest
from edgeopt.deploy.report import write_report
from edgeopt.deploy.target_registry import get_target, list_targets
from edgeopt.deploy.validation import ValidationReport, validate

__all__ = [
    "BundleResult",
    "CompileResult",
    "Manifest",
    "ValidationReport",
    "compile_model",
    "get_target",
    "list_targets",
    "parse_device",
    "read_bundle",
    "read_manifest",
    "run_on_device",
    "score_bundle",
    "validate",
    "write_bundle",
    "write_report",
]
