"""Target profiles: one YAML file per device/format/precision, found in folders of profiles."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, PositiveInt, PrivateAttr, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .gate_spec import GateSpec
from .schema import Strict, describe_error, parse, read_yaml

Precision = Literal["fp32", "fp16", "int8"]
OptionsT = TypeVar("OptionsT", bound=Strict)


class InputSpec(Strict):
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    batch: PositiveInt | Literal["dynamic"] = 1


class RuntimeSpec(Strict):
    engine: str | None = Field(None, description="which runtime of the format runs the artifact (default: the "
                               "first this host can run, e.g. Core ML itself on macOS, else the reference interpreter)")
    threads: PositiveInt = 1
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] | None = None
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


class OnnxOptions(Strict):
    opset: int = Field(18, ge=13, le=23)
    qdq_dtype: Literal["uint8", "int8"] = Field(
        "uint8", description="8-bit type of int8 QDQ tensors: uint8 runs onnxruntime's exact U8U8 kernels on every CPU; "
        "int8 is what TensorRT/QNN take (on x86 without VNNI onnxruntime's U8S8 kernels saturate)")
    input_name: str = "input"
    output_name: str = "logits"


class TfliteOptions(Strict):
    """LiteRT options: the model's output dtype (input dtype and layout come from ``input``)."""

    output_dtype: Literal["float32", "int8", "uint8"] = "float32"
    allow_float_ops: bool = Field(
        False, description="accept float ops inside a full-int8 file (they fall back to the CPU on an NPU/DSP)")


class CoremlOptions(Strict):
    """Core ML conversion: deployment target, input as a tensor or an image (pixels * scale + bias)."""

    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS14"] = "iOS17"
    input_type: Literal["tensor", "image"] = "tensor"
    image_scale: float = 1.0
    image_bias: list[float] = Field(default_factory=lambda: [0.0])  # one value, or one per channel
    input_name: str = "input"
    output_name: str = "logits"
    weights: Literal["float", "int8", "palette4", "palette6"] = Field(
        "float", description="weight-only compression of fp16/fp32 programs: int8 linear (per-channel symmetric) "
        "or k-means palettes of 2^4 / 2^6 entries; activations stay float")


class DeviceSpec(Strict):
    name: str = "host"
    kind: Literal["cpu", "gpu", "npu", "phone", "board"] = "cpu"
    os: str | None = None
    minimum_os: str | None = None


class SshSpec(Strict):
    """A reachable Linux device with Python, numpy and the artifact's runtime installed."""

    host: str
    user: str
    port: int = Field(22, ge=1, le=65535)
    key: str | None = Field(None, description="private key file; default: the ssh client's keys / agent")
    python: str = "python3"
    workdir: str = Field("/tmp", pattern=r"^/")
    connect_timeout: int = Field(10, ge=1)
    known_hosts: str | None = Field(None, description="pin host keys with this known_hosts file")


class AdbSpec(Strict):
    """An Android device over adb with TFLite's benchmark_model binary pushed to it."""

    serial: str
    benchmark_model: str = "/data/local/tmp/benchmark_model"
    workdir: str = "/data/local/tmp"
    adb: str = "adb"


class LatencySpec(Strict):
    measured_on: Literal["host", "ssh", "adb"] = Field(
        "host", description="host: this machine, labelled as such; ssh/adb: the device itself")
    ssh: SshSpec | None = None
    adb: AdbSpec | None = None

    @model_validator(mode="after")
    def _runner_given(self) -> LatencySpec:
        if self.measured_on == "ssh" and self.ssh is None:
            raise ValueError("measured_on: ssh needs latency.ssh: {host, user, key, python}")
        if self.measured_on == "adb" and self.adb is None:
            raise ValueError("measured_on: adb needs latency.adb: {serial, benchmark_model}")
        return self


class TargetProfile(Strict):
    """One device/format/precision. Options of formats without a section here (``executorch: {...}``)
    are kept raw and parsed by that format's exporter (``format_options``), so a new format adds no
    field here."""

    name: str = Field(pattern=r"^[\w.-]+$")
    description: str = ""
    format: str
    precision: Precision
    device: DeviceSpec = Field(default_factory=DeviceSpec)
    input: InputSpec = Field(default_factory=InputSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    onnx: OnnxOptions = Field(default_factory=OnnxOptions)
    coreml: CoremlOptions = Field(default_factory=CoremlOptions)
    tflite: TfliteOptions = Field(default_factory=TfliteOptions)
    gate: GateSpec = Field(default_factory=GateSpec, description="this target's limits; a limit set here "
                           "overrides the build config's gate for this target only")
    latency: LatencySpec = Field(default_factory=LatencySpec)
    format_sections: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    _options: dict[type, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_format_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if "budgets" in data:
            raise ValueError("'budgets' is now 'gate' with the build gate's names: min_retention, max_drift_points, "
                             "min_agreement, max_latency_p90_ms, max_size_kb")
        from .exporters import known_formats

        extra = {k: data[k] for k in data if k not in cls.model_fields and k in known_formats()}
        if not extra:
            return data
        if any(not isinstance(v, dict) for v in extra.values()):
            raise ValueError(f"format options {', '.join(extra)} must be mappings")
        return {**{k: v for k, v in data.items() if k not in extra}, "format_sections": extra}

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        from .exporters import known_formats

        if v not in known_formats():
            raise ValueError(f"unknown format '{v}' (available: {', '.join(known_formats())})")
        return v

    def format_options(self, model: type[OptionsT]) -> OptionsT:
        """This profile's section for its own format (``<format>: {...}``), parsed by the format's model."""
        if model not in self._options:
            raw = self.format_sections.get(self.format, {})
            try:
                self._options[model] = model.model_validate(raw)
            except ValidationError as exc:
                raise ConfigError(f"{self.format}.{describe_error(model, exc)}", target=self.name,
                                  fix=f"fix the '{self.format}:' section of the profile") from None
        return self._options[model]  # type: ignore[no-any-return,unused-ignore]



def builtin_target_dir() -> Path:
    """The repository's targets/ folder (beside the package)."""
    return Path(__file__).resolve().parent.parent / "targets"


def search_dirs(extra: Iterable[Path] = ()) -> list[Path]:
    dirs = list(extra)
    env = os.environ.get("EDGEFORGE_TARGETS")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(builtin_target_dir())
    return dirs


def load_profile(path: Path) -> TargetProfile:
    profile = parse(TargetProfile, read_yaml(path), str(path))
    if profile.name != path.stem:
        raise ConfigError(f"{path}: name '{profile.name}' differs from the file name; rename one so they match")
    return profile


def available(dirs: Iterable[Path] = ()) -> dict[str, Path]:
    """Profile name -> file; earlier folders win, so a user's folder overrides the built-ins."""
    found: dict[str, Path] = {}
    for d in search_dirs(dirs):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def resolve(names: Iterable[str], dirs: Iterable[Path] = ()) -> list[TargetProfile]:
    index = available(dirs)
    profiles = []
    for name in names:
        if name not in index:
            import difflib

            close = difflib.get_close_matches(name, list(index), n=1, cutoff=0.6)
            known = ", ".join(sorted(index)) or "none"
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown target '{name}'; {hint}available: {known} "
                              "(add a profile to targets/ or target_dirs)")
        profiles.append(load_profile(index[name]))
    return profiles
