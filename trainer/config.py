"""Training configuration: one dataclass whose fields carry their help text (TRL style).

Values come, lowest precedence first, from the field defaults, the ``--tiny`` preset (also applied
when ``model == "tiny"``), a ``--config FILE.yaml|.yml|.toml`` file, and command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from labeler.errors import DenseprefError

__all__ = [
    "TINY_PRESET",
    "ConfigError",
    "TrainConfig",
    "build_parser",
    "load_config_file",
    "parse_train_args",
]


class ConfigError(DenseprefError, ValueError):
    """A bad configuration file or value; the message names the key."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    prefs: str = _f(
        "",
        "Dense preference JSONL (the labeler's output, docs/contracts.md). Relative video paths "
        "resolve against its directory.",
    )
    model: str = _f(
        "",
        "Model id or local path of a diffusers video model (e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers), "
        "or 'tiny' for a tiny random-weight Wan built in code.",
    )
    output_dir: str = _f("", "Where logs, checkpoints and the final LoRA go.")
    mode: Literal["dense", "vanilla"] = _f(
        "dense",
        "dense: DenseDPO on per-latent-frame labels; vanilla: video-level "
        "DPO on the video label (ties dropped).",
    )
    reduction: Literal["frame", "segment"] = _f(
        "frame", "Dense loss form: one term per latent frame (Appendix E) or per segment (Eq. 7)."
    )
    beta: float = _f(500.0, "DPO beta (the DenseDPO and Flow-DPO papers use 500).")
    lora_rank: int = _f(128, "LoRA rank.")
    lora_alpha: int | None = _f(
        None, "LoRA alpha, an integer as peft declares it (default: equal to the rank)."
    )
    lora_targets: str | None = _f(
        None, "Comma-separated module names to adapt (default: the adapter's attention projections)."
    )
    steps: int = _f(1000, "Optimizer steps.")
    batch_size: int = _f(1, "Pairs per device per micro-batch (each pair is two videos).")
    grad_accum: int = _f(1, "Micro-batches accumulated per optimizer step.")
    lr: float = _f(1e-5, "AdamW learning rate after warm-up.")
    warmup: int = _f(250, "Linear warm-up steps, then constant.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    seed: int = _f(0, "Seed of LoRA init, data order, noise and timesteps.")
    min_nontie_fraction: float = _f(0.2, "Train only on pairs whose share of non-tie segments is above this.")
    height: int | None = _f(None, "Training height in pixels (default: the model's preset).")
    width: int | None = _f(None, "Training width in pixels (default: the model's preset).")
    num_frames: int | None = _f(
        None,
        "Train on the first N frames of each video, N = 1 + k*r (default: the model's clip length, 81 for Wan). "
        "The non-tie filter, the video label and the latent masks use only the segments inside these frames; "
        "pairs whose labels cover fewer frames are skipped.",
    )
    timestep_sampling: Literal["auto", "uniform", "logit-normal", "shift", "wan480"] = _f(
        "auto",
        "How the noise level t of each pair is drawn: uniform t ~ U(0, 1); logit-normal t = sigmoid(N(0, 1)); "
        "shift: u ~ U(0, 1) mapped by t = s*u / (1 + (s-1)*u); wan480: logit-normal with shift 2, the Wan "
        "team's 480p training recipe (Wan2.1 issue #291). auto: the model family's preset (Wan: shift 5, the "
        "Wan repo's T2V sample_shift and DiffSynth-Studio's training scheduler; see docs/training.md).",
    )
    timestep_shift: float | None = _f(
        None,
        "Shift s applied to the drawn t by 'shift' and 'logit-normal' (s > 1 favours high noise; default: the "
        "model family's, 5 for Wan, with 'shift'; 1, no shift, with 'logit-normal').",
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = _f("no", "accelerate mixed precision (bf16 on a GPU).")
    weights_dtype: Literal["fp32", "bf16", "fp16"] = _f(
        "fp32", "dtype of the frozen base weights (LoRA stays fp32)."
    )
    gradient_checkpointing: bool = _f(False, "Recompute transformer blocks in backward to save memory.")
    video_root: str | None = _f(
        None,
        "Directory that relative video paths in the labels resolve against (default: the label file's directory).",
    )
    eval_pairs: int = _f(32, "Training pairs scored with fixed noise before and after training (0: off).")
    eval_prefs: str | None = _f(
        None,
        "A held-out dense preference JSONL (same format as --prefs, cut to the same window and filtered "
        "alike): all its pairs are scored with fixed noise before and after training, logged as "
        "'eval_heldout' beside the training pairs' 'eval'.",
    )
    validation_prompts: str | None = _f(
        None,
        "A text file, one prompt per line: each is rendered from fixed noise by the base model (step 0) "
        "and by the LoRA every --validation-steps steps and at the end, as OUTPUT_DIR/validation/"
        "step-<N>/prompt-<i>.mp4 (listed in log.jsonl, logged as frames to --report-to trackers).",
    )
    validation_steps: int = _f(
        0, "Render the validation prompts every N steps (0: only before and after training)."
    )
    validation_inference_steps: int | None = _f(
        None, "Sampling steps of a validation video (default: the model's, 50 for Wan, 20 for tiny)."
    )
    cache_dir: str | None = _f(
        None,
        "Latent / text-embedding cache (default: OUTPUT_DIR/cache). On several GPUs, fill it first with "
        "`python -m trainer.cache` (split over the processes): here only the main process encodes.",
    )
    process_group_timeout: float | None = _f(
        None,
        "Seconds a process waits at a collective (the barrier while the main process builds the cache, "
        "a slow step) before the run is aborted (default: torch's, 10 min for NCCL, 30 min for gloo).",
    )
    save_every: int = _f(250, "Save a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = _f(2, "How many checkpoints to keep (older ones are deleted).")
    log_every: int = _f(1, "Log every N steps.")
    resume: bool = _f(
        False,
        "Continue from the latest checkpoint in OUTPUT_DIR. Refused (exit 2, naming each difference) when "
        "a setting that shapes the run differs from the checkpoint's: model, mode, reduction, beta, LoRA "
        "rank / alpha / targets, frames, height, width, seed, timestep sampling and shift.",
    )
    resume_changed_config: bool = _f(
        False,
        "With --resume: continue even though those settings changed; the differences are written into "
        "log.jsonl (a 'config_changed' line at the resumed step).",
    )
    report_to: str = _f(
        "auto",
        "Extra trackers: 'auto' (TensorBoard if installed), 'none', or a comma list of "
        "accelerate trackers (tensorboard, wandb).",
    )
    tiny: bool = _f(False, "Tiny CPU preset: model 'tiny' and settings that train in seconds.")

    def __post_init__(self) -> None:
        if self.tiny and not self.model:
            self.model = "tiny"
        self._check_counts()
        self._check_optional_settings()
        for name, typ in get_type_hints(TrainConfig).items():
            choices = _literal_choices(typ)
            if choices and getattr(self, name) not in choices:
                raise ConfigError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def _check_counts(self) -> None:
        """Counts that must be positive, or at least zero."""
        positive = (
            "steps",
            "batch_size",
            "grad_accum",
            "lora_rank",
            "save_every",
            "log_every",
            "keep_checkpoints",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup", "eval_pairs", "validation_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.validation_inference_steps is not None and self.validation_inference_steps <= 0:
            raise ConfigError(
                f"validation_inference_steps must be positive, got {self.validation_inference_steps}"
            )

    def _check_optional_settings(self) -> None:
        """Settings that only make sense with another one, or only in a range."""
        for name in ("validation_steps", "validation_inference_steps"):
            if getattr(self, name) and not self.validation_prompts:
                raise ConfigError(f"{name} needs validation_prompts")
        if self.process_group_timeout is not None and not self.process_group_timeout > 0:
            raise ConfigError(f"process_group_timeout must be positive, got {self.process_group_timeout}")
        if self.num_frames is not None and self.num_frames <= 0:
            raise ConfigError(f"num_frames must be positive, got {self.num_frames}")
        if self.timestep_shift is not None:
            if not self.timestep_shift > 0:
                raise ConfigError(f"timestep_shift must be positive, got {self.timestep_shift}")
            if self.timestep_sampling == "uniform":
                raise ConfigError("timestep_shift has no effect with timestep_sampling 'uniform'")
        if not 0.0 <= self.min_nontie_fraction < 1.0:
            raise ConfigError(f"min_nontie_fraction must be in [0, 1), got {self.min_nontie_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: What ``--tiny`` changes: small, fast settings for the random-weight tiny model on a CPU.
TINY_PRESET: dict[str, Any] = {
    "model": "tiny",
    "lora_rank": 4,
    "steps": 20,
    "batch_size": 2,
    "lr": 5e-3,
    "warmup": 2,
    "save_every": 10,
}


def _literal_choices(typ: Any) -> tuple[Any, ...]:
    return get_args(typ) if get_origin(typ) is Literal else ()


def _scalar_type(typ: Any) -> Any:
    args = [a for a in get_args(typ) if a is not type(None)]
    return args[0] if args else typ


def build_parser(prog: str = "python -m trainer.train") -> argparse.ArgumentParser:
    """argparse from the dataclass fields. Defaults are suppressed so that only flags actually given
    override the lower layers (defaults, preset, config file)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="DenseDPO / vanilla DPO LoRA training of a diffusers "
        "video model on dense preference labels.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", help="YAML or TOML file with any of the options below (flags override it)."
    )
    hints = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        elif choices := _literal_choices(typ):
            parser.add_argument(flag, choices=choices, help=help_text)
        else:
            parser.add_argument(flag, type=_scalar_type(typ), help=help_text)
    return parser


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or TOML file; keys may use - or _. Unknown keys are an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"{path}: config must be .yaml, .yml or .toml")
    except ConfigError:
        raise
    except Exception as exc:  # yaml.YAMLError, tomllib.TOMLDecodeError
        raise ConfigError(f"{path}: cannot parse config: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: config must be a mapping of option names to values")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise ConfigError(f"{path}: unknown option {key!r}")
        out[name] = _coerce(name, value, path)
    return out


def _coerce(name: str, value: Any, path: Path) -> Any:
    # YAML reads "1e-5" as a string and TOML has no null: convert to the field's type, or say why not.
    typ = get_type_hints(TrainConfig)[name]
    scalar = _scalar_type(typ)
    if value is None or _literal_choices(typ) or (isinstance(value, bool) and scalar is bool):
        return value
    if scalar in (int, float, str) and not isinstance(value, (dict, list, bool)):
        try:
            converted = scalar(value)
        except (TypeError, ValueError):
            converted = None
        if converted is not None and (scalar is not int or float(value) == converted):
            return converted
    raise ConfigError(f"{path}: option {name!r} must be {scalar.__name__}, got {value!r}")


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    """Build a TrainConfig from defaults < tiny preset < config file < flags; prefs, model (unless
    tiny) and output_dir are required."""
    parser = build_parser()
    given = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_path = given.pop("config", None)
    file_values = load_config_file(config_path) if config_path else {}
    if given.get("tiny", file_values.get("tiny")) or given.get("model", file_values.get("model")) == "tiny":
        values.update(TINY_PRESET)
    values.update(file_values)
    values.update(given)
    missing = [name for name in ("prefs", "model", "output_dir") if not values.get(name)]
    if missing:
        parser.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return TrainConfig(**values)
    except TypeError as exc:  # a wrongly typed value from the config file
        raise ConfigError(str(exc)) from exc
