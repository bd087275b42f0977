"""The build config: one YAML file declaring teacher, student, data, distill, QAT, targets, gate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from .errors import ConfigError
from .gate_spec import GateSpec
from .schema import Strict, parse, read_yaml

FACTORY_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
# numpy's legacy seeding, the narrowest consumer of our seeds, takes 0..2**32-1.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1, description="a random seed, 0..4294967295")]


class TeacherConfig(Strict):
    """Exactly one of factory (+checkpoint), torchscript or program."""

    factory: str | None = Field(None, pattern=FACTORY_PATTERN, description="package.module:function")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    torchscript: str | None = None
    program: str | None = Field(None, description="a torch.export .pt2 program")
    trust_checkpoint: bool = Field(
        False, description="load the checkpoint with weights_only=False (runs pickled code: only for files you trust)"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        given = [k for k in ("factory", "torchscript", "program") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of factory, torchscript or program")
        if self.checkpoint and not self.factory:
            raise ValueError("checkpoint goes with factory (a state_dict for the model it builds)")
        return self


class StudentConfig(Strict):
    family: str | None = Field("convnet", description="a built-in student family")
    factory: str | None = Field(None, pattern=FACTORY_PATTERN)
    width: PositiveInt = 16
    depth: PositiveInt = 2
    kwargs: dict[str, Any] = Field(default_factory=dict)
    embedding_from_teacher: str | None = Field(
        None, description="a teacher nn.Embedding (module name) whose table, projected to the student's width by "
                          "PCA, initialises a transformer student's token embedding (same tokenizer)")

    @model_validator(mode="after")
    def _one_source(self) -> StudentConfig:
        if self.factory and "family" in self.model_fields_set:
            raise ValueError("give either family or factory, not both")
        return self


class CalibrationConfig(Strict):
    name: str = "calibration"
    description: str = ""
    split: Literal["train", "val"] = "train"
    samples: PositiveInt = 256
    selection: Literal["stratified", "random", "first"] = "stratified"
    seed: Seed = 0


class AugmentConfig(Strict):
    """Training-time augmentation, drawn per batch from the epoch's seed (a resumed run draws the same)."""

    hflip: bool = Field(False, description="flip each image left-right with probability 1/2")
    crop_padding: NonNegativeInt = Field(0, description="pad by this many pixels (zeros), then crop back at random")


class TextConfig(Strict):
    """Documents tokenized at load time with a local tokenizer file (Hugging Face ``tokenizers`` JSON)."""

    tokenizer: str = Field(description="path to a tokenizer.json")
    max_length: PositiveInt = Field(128, description="tokens per document: longer ones are truncated, shorter padded")
    text_key: str = "text"
    label_key: str = "label"
    input_dtype: Literal["int32", "int64"] = "int64"


class DataConfig(Strict):
    kind: Literal["npz", "npy", "image_folder", "factory", "text"] = "npz"
    train: str
    val: str
    test: str
    x_key: str = "x"
    y_key: str = "y"
    factory: str | None = Field(None, pattern=FACTORY_PATTERN)
    image_size: tuple[PositiveInt, PositiveInt] | None = None
    grayscale: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    class_names: list[str] | None = None
    augmented: bool = Field(False, description="the training data changes every epoch (no teacher-output cache)")
    stream: bool = Field(False, description="read batches from disk (memory maps, per-batch image decoding) instead "
                                            "of loading every split into memory")
    workers: NonNegativeInt = Field(0, description="DataLoader worker processes reading streamed batches")
    augment: AugmentConfig | None = None
    text: TextConfig | None = Field(None, description="kind text: JSON-lines splits and the tokenizer")
    teacher_cache: str | None = Field(None, description="folder for cached teacher outputs (default: "
                                                        "$EDGEFORGE_CACHE_DIR or ~/.cache/edgeforge)")
    calibration: str | CalibrationConfig = Field(default_factory=CalibrationConfig)

    @model_validator(mode="after")
    def _kind_fields(self) -> DataConfig:
        if self.kind == "factory" and not self.factory:
            raise ValueError("kind 'factory' needs a factory: package.module:function")
        if self.kind == "image_folder" and not self.image_size:
            raise ValueError("kind 'image_folder' needs image_size: [height, width]")
        if self.workers and not self.stream:
            raise ValueError("workers read streamed batches: set stream: true, or drop workers")
        if self.kind == "text" and self.text is None:
            raise ValueError("kind 'text' needs text: {tokenizer: path/to/tokenizer.json, max_length: 128}")
        if self.kind == "text" and (self.stream or self.augment is not None):
            raise ValueError("text data is tokenized into memory: drop stream and augment")
        return self

    @property
    def varies(self) -> bool:
        """The training inputs differ between epochs, so teacher outputs cannot be computed once."""
        return self.augmented or (self.augment is not None and (self.augment.hflip or self.augment.crop_padding > 0))


class HintConfig(Strict):
    teacher: str = Field(description="name of a teacher submodule whose output is matched")
    student: str = Field(description="name of a student submodule")
    weight: PositiveFloat = 1.0


class DistillConfig(Strict):
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 3e-3
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    temperature: PositiveFloat = 4.0
    alpha: float = Field(0.7, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs the hard-label loss")
    hints: list[HintConfig] = Field(default_factory=list)
    seed: Seed = 0


class FallbackConfig(Strict):
    """Float fallback: keep the layers int8 hurts most in float until QAT meets an accuracy budget."""

    max_drop_points: float = Field(0.5, ge=0, description="allowed drop of the QAT simulation's metric below the "
                                   "float student on the validation split, in points")
    metric: str = Field("top1", description="the metric the budget is measured in: a built-in metric's name "
                        "(top1, top5, macro_f1, mean_class_recall, min_class_recall)")
    max_float_layers: PositiveInt = Field(3, description="at most this many conv/linear layers are kept float; "
                                          "the build fails when they are not enough")

    @field_validator("metric")
    @classmethod
    def _builtin_metric(cls, v: str) -> str:
        from .metrics import METRICS

        if v not in METRICS:
            raise ValueError(f"unknown metric '{v}'; the fallback takes a built-in one: {', '.join(METRICS.names())}")
        return v


class QatConfig(Strict):
    epochs: int = Field(5, ge=0, description="0: post-training quantization only (ranges from the calibration set)")
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 5e-4
    range_lr_ratio: PositiveFloat = Field(0.01, description="learning rate of activation scales relative to lr")
    weight_decay: float = Field(0.0, ge=0)
    scheme: Literal["w8a8", "w4a8"] = Field(
        "w8a8", description="w4a8: weights on a 4-bit grid ([-7, 7] per channel) stored in int8 tensors (an accuracy "
        "setting: every format still stores 8 bits per weight)")
    weights: Literal["per_channel_symmetric"] = "per_channel_symmetric"
    activations: Literal["per_tensor_affine"] = "per_tensor_affine"
    range_init: Literal["minmax", "histogram"] = "minmax"
    learn_ranges: bool = True
    keep_teacher: bool = Field(True, description="keep the teacher's KD term in the QAT loss")
    temperature: PositiveFloat | None = None
    alpha: float | None = Field(None, ge=0, le=1)
    seed: Seed = 0
    float_modules: list[str] = Field(default_factory=list, description="student modules (conv/linear, by name as "
                                     "in named_modules) kept float in every int8 artifact")
    fallback: FallbackConfig | None = Field(None, description="keep the layers int8 hurts most in float until QAT "
                                            "is within max_drop_points of the float student")


class TrainConfig(Strict):
    """Where and how the training stages run (teacher inference, distillation, QAT)."""

    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
                        description="auto | cpu | cuda | cuda:N | mps; auto takes a GPU when there is one. Under "
                        "torchrun, cuda means cuda:LOCAL_RANK")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast for teacher inference and distillation; QAT always trains in fp32")


GateConfig = GateSpec  # the build's gate: defaults for every target (DEFAULT_GATE fills what is unset)


class RegressionConfig(Strict):
    """Allowed change of a build against a baseline manifest (edgeforge check, or baseline: in build)."""

    max_top1_drop_points: float = Field(0.3, ge=0)
    max_metric_drop_points: float | None = Field(
        None, ge=0, description="allowed drop of the build's metric (metric:) in points when it is not top1; "
        "default: max_top1_drop_points")
    max_retention_drop: float = Field(0.003, ge=0)
    max_drift_increase_points: float = Field(0.5, ge=0)
    max_latency_growth: float = Field(0.10, ge=0, description="relative growth of p50 and p90, e.g. 0.10 = 10%")
    max_size_growth: float = Field(0.05, ge=0)


class ValidationConfig(Strict):
    warmup: int = Field(10, ge=0)
    runs: PositiveInt = 100
    batch_size: PositiveInt = 256
    parity_atol: PositiveFloat = Field(1e-4, description="max |diff| for float artifacts vs the float student")


class BuildConfig(Strict):
    name: str = Field(pattern=r"^[\w.-]+$")
    output: str = "build"
    teacher: TeacherConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    data: DataConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    qat: QatConfig = Field(default_factory=QatConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    targets: list[str] = Field(min_length=1)
    target_dirs: list[str] = Field(default_factory=list, description="extra folders of target profiles")
    metric: str = Field("top1", description="the task metric retention, drift, the gate and regression checks use: "
                        "top1, top5, macro_f1, mean_class_recall, min_class_recall, or package.module:function")
    gate: GateConfig = Field(default_factory=GateConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    baseline: str | None = Field(None, description="a previous manifest.json to check this build against")
    regression: RegressionConfig = Field(default_factory=RegressionConfig)
    preflight: bool = Field(True, description="export the untrained student for every target before training")
    progress: bool = True

    @field_validator("metric")
    @classmethod
    def _metric_name(cls, v: str) -> str:
        from .metrics import check_name

        return check_name(v)

    @field_validator("targets")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dupes = sorted({t for t in v if v.count(t) > 1})
        if dupes:
            raise ValueError(f"targets listed twice: {', '.join(dupes)}")
        return v


class LoadedConfig:
    """A parsed config plus where it came from (relative paths resolve against its folder)."""

    def __init__(self, config: BuildConfig, path: Path, raw: dict[str, Any]) -> None:
        self.config = config
        self.path = path
        self.root = path.parent
        self.raw = raw

    def resolve(self, relative: str) -> Path:
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p).resolve()

    @property
    def output_dir(self) -> Path:
        return self.resolve(self.config.output)

    def calibration(self) -> CalibrationConfig:
        cal = self.config.data.calibration
        if isinstance(cal, CalibrationConfig):
            return cal
        path = self.resolve(cal)
        return parse(CalibrationConfig, read_yaml(path), str(path))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.config.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> LoadedConfig:
    """Read and validate a build config; ``overrides`` maps dotted keys to values (``gate.min_retention``)."""
    p = Path(path)
    raw = read_yaml(p)
    if raw is None:
        raise ConfigError(f"{p}: the file is empty; see samples/digits/edgeforge.yaml for a complete config")
    if isinstance(raw, dict):
        for key, value in (overrides or {}).items():
            _set_dotted(raw, key, value, p)
    cfg = parse(BuildConfig, raw, str(p))
    lc = LoadedConfig(cfg, p.resolve(), raw)
    if cfg.baseline:
        _check_baseline(lc.resolve(cfg.baseline), p)
    try:
        check_factory_keywords(lc)
    except ConfigError as exc:  # name the config file: the factory is the config's
        raise ConfigError(exc.message, file=str(p), key=exc.key, fix=exc.fix) from None
    return lc


def _check_baseline(path: Path, source: Path) -> None:
    """A baseline that is not a manifest would only be found out after the whole build."""
    fix = "point baseline: at the manifest.json of an earlier edgeforge build"
    if not path.is_file():
        raise ConfigError(f"{source}: baseline: {path} not found; {fix}")
    try:
        with path.open("rb") as f:
            doc = json.loads(f.read(64 << 20))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: baseline: {path} is not JSON ({str(exc)[:80]}); {fix}") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not (isinstance(schema, str) and schema.startswith("edgeforge.manifest/")):
        raise ConfigError(f"{source}: baseline: {path} is not an edgeforge manifest (schema {schema!r}); {fix}")


def _check_keywords(fn: Any, what: str, key: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    import inspect

    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: its call will tell
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}: {what} does not take these arguments ({exc}); "
                          f"its parameters: {', '.join(sig.parameters) or 'none'}") from None


def check_factory_keywords(lc: LoadedConfig) -> None:
    """Bind teacher/student kwargs to the callables they will be passed to, without calling them."""
    from .factories import add_search_paths, load_callable

    add_search_paths([lc.root, Path.cwd()])
    t, s = lc.config.teacher, lc.config.student
    if ":" in lc.config.metric:
        _check_keywords(load_callable(lc.config.metric, "metric"), lc.config.metric, "metric", (None, None), {})
    if t.factory:
        _check_keywords(load_callable(t.factory, "teacher.factory"), t.factory, "teacher.kwargs", (), t.kwargs)
    if s.factory:
        _check_keywords(load_callable(s.factory, "student.factory"), s.factory, "student.kwargs", (), s.kwargs)
        return
    from .models.students import STUDENTS

    try:
        builder = STUDENTS.get(s.family or "convnet")
    except Exception as exc:
        raise ConfigError(f"student.family: {exc}") from None
    taken = sorted({"in_channels", "num_classes", "width", "depth"} & set(s.kwargs))
    if taken:
        raise ConfigError(f"student.kwargs: {', '.join(taken)} is set by edgeforge; use student.width / student.depth")
    # a transformer's vocab_size and max_len come from the text data's tokenizer when not given
    filled = {"vocab_size": 2, "max_len": 1} if s.family == "transformer" and lc.config.data.kind == "text" else {}
    _check_keywords(builder, f"student family '{s.family}'", "student.kwargs", (1, 1),
                    {"width": 1, "depth": 1, **filled, **s.kwargs})


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: Path) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot override {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value
