"""The judge's configuration as one typed object: :class:`JudgeConfig`.

Each field is one option, declared once with everything about it in its metadata (:func:`option`):
its ``--flag`` help, the judges that read it, and how it reaches the judge's constructor. The CLI's
flags are generated from the fields (:func:`add_judge_config_arguments`, in the manner of TRL's
``HfArgumentParser``), the object checks itself when built (an option given to a judge that does
not read it, a judge that needs ``--model``), and the same object is what the service and the Ray
actors receive: no ``argparse.Namespace`` travels past the CLI.

**Adding a judge option** is one edit here plus its test: add a field ``name: T | None = option(
"help", judges=(...))``, whose name is the judge constructor's keyword (or give ``kwarg=`` and
``to=`` to rename or convert it, as ``no_logprobs`` does), and a test that shows the option changes
something. The flag (``--name-with-dashes``), the refusal for other judges and the passing to the
judge all follow from the field. docs/contracts.md, "Configuration", says the same.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from labeler.errors import UsageError
from labeler.judges import JUDGE_NAMES, build_judge
from labeler.judges.base import Judge
from labeler.judges.openai_request import ANSWER_ORDERS, EFFORTS, parse_price

__all__ = ["JUDGE_READS", "JudgeConfig", "add_judge_config_arguments", "option"]

OPENAI, HF, METRICS = ("openai",), ("hf",), ("metrics",)
#: Options the openai and gemini judges both read (the API judges).
APIS = ("openai", "gemini")


def option(
    help: str,
    *,
    judges: tuple[str, ...],
    type: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    flag_only: bool = False,
    kwarg: str | None = None,
    to: Callable[[Any], Any] | None = None,
) -> Any:
    """A judge option: a dataclass field defaulting to None ("the judge's own default"), or False
    for a ``flag_only`` switch. ``judges`` read it; ``kwarg``/``to`` rename and convert it for the
    judge's constructor (default: the field's name, the value as is)."""
    meta = {
        "help": help,
        "judges": judges,
        "type": type,
        "choices": choices,
        "metavar": metavar,
        "flag_only": flag_only,
        "kwarg": kwarg,
        "to": to,
    }
    return field(default=False if flag_only else None, metadata=meta)


def _price(text: str) -> tuple[float, float]:
    try:
        return parse_price(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    for key in ("model", "messages"):
        if key in value:
            raise argparse.ArgumentTypeError(f"must not set {key!r} (the judge sends it)")
    return value


def _false_if_set(given: bool) -> bool | None:
    return False if given else None


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge, and the options it reads; checked when built (UsageError)."""

    judge: str = field(
        default="metrics",
        metadata={
            "help": "metrics: embedded model-free default (no key, no GPU); openai: any OpenAI-compatible "
            "chat endpoint (OpenAI GPT, vllm serve); gemini: Google's Gemini, each segment as inline "
            "video (GEMINI_API_KEY); hf: a local transformers VLM (default: %(default)s)",
            "choices": JUDGE_NAMES,
        },
    )
    model: str | None = option(
        "model name for --judge openai (e.g. gpt-4o-mini, Qwen/Qwen2.5-VL-7B-Instruct) or --judge "
        "gemini (e.g. gemini-2.5-flash), or a model path / hub id for --judge hf",
        judges=("openai", "gemini", "hf"),
    )
    base_url: str | None = option(
        "OpenAI-compatible endpoint, e.g. http://gpu-box:8000/v1 for vllm serve "
        "(default: OpenAI; the key comes from OPENAI_API_KEY); for --judge gemini, a proxy of the "
        "Gemini API",
        judges=APIS,
    )
    prompt: str | None = option(
        "judge prompt template name in prompts/ or a .j2 path (default: conservative)",
        judges=("openai", "gemini", "hf"),
    )
    layout: str | None = option(
        "frames of A then of B as separate images, or one A|B composite per time step "
        "(half the images) (default: separate)",
        judges=("openai", "hf"),
        choices=("separate", "side-by-side"),
    )
    detail: str | None = option(
        "OpenAI image detail (default: low)", judges=OPENAI, choices=("low", "high", "auto")
    )
    input: str | None = option(
        "what the VLM sees of each segment: frames = the sampled frames as still images; video = "
        "each video's frames as one video_url clip with their real timing (vLLM/SGLang serving "
        "Qwen2.5-VL or Qwen3-VL; not OpenAI; --judge hf: Qwen2-VL/Qwen2.5-VL checkpoints, each video as the "
        "model's video input). --frames-per-segment sets the frame count either way (default: frames)",
        judges=("openai", "hf"),
        choices=("frames", "video"),
        kwarg="input_mode",
    )
    show_reference: bool = option(
        "show each pair's reference (the real video both were generated from) beside A and B; "
        "a pair without a reference, or whose reference does not match it, fails",
        judges=(*APIS, "hf"),
        flag_only=True,
        to=lambda given: True if given else None,
    )
    temperature: float | None = option("sampling temperature (default: 0)", judges=APIS, type=float)
    max_tokens: int | None = option("answer token limit (default: 300)", judges=APIS, type=int)
    no_logprobs: bool = option(
        "do not ask the endpoint for logprobs (probabilities then come from votes)",
        judges=APIS,
        flag_only=True,
        kwarg="logprobs",
        to=_false_if_set,
    )
    no_strict: bool = option(
        "send the answer schema with strict: false (default: strict: true; vLLM ignores it)",
        judges=OPENAI,
        flag_only=True,
        kwarg="strict_schema",
        to=_false_if_set,
    )
    reasoning_effort: str | None = option(
        "reasoning models: the effort to ask for (default: the model's own, from the model table); "
        "on a model outside the table it marks it as a reasoning model and reserves thinking tokens",
        judges=OPENAI,
        choices=EFFORTS,
    )
    extra_body: dict[str, Any] | None = option(
        "server-specific fields merged into every request body, e.g. vLLM's "
        '\'{"top_k": 20, "repetition_penalty": 1.05}\' (they enter the cache key)',
        judges=OPENAI,
        type=_json_object,
        metavar="JSON",
    )
    default_query: dict[str, Any] | None = option(
        "query parameters added to every request, e.g. Azure OpenAI's legacy endpoint: "
        '\'{"api-version": "2024-10-21"}\' (docs/endpoints.md, providers)',
        judges=OPENAI,
        type=_json_object,
        metavar="JSON",
    )
    default_header: dict[str, Any] | None = option(
        "HTTP headers added to every request, e.g. Azure's '{\"api-key\": \"...\"}' or a gateway's "
        "routing header (never part of the cache key)",
        judges=OPENAI,
        type=_json_object,
        metavar="JSON",
        kwarg="default_headers",
    )
    price: tuple[float, float] | None = option(
        "USD per 1M input and output tokens, for a model the price table does not list "
        "(needed for --max-cost on it)",
        judges=APIS,
        type=_price,
        metavar="IN,OUT",
    )
    answer_order: str | None = option(
        "label-first: p_* are the model's belief before any rationale (comparable with --judge hf); "
        "rationale-first: the model reasons first (default: label-first)",
        judges=APIS,
        choices=ANSWER_ORDERS,
    )
    device: str | None = option("torch device for --judge hf (default: cpu)", judges=HF)
    dtype: str | None = option("torch dtype for --judge hf, e.g. bfloat16 (default: auto)", judges=HF)
    rationale_tokens: int | None = option(
        "--judge hf: let the model write a rationale of up to N tokens before the label is "
        "scored (default: 0, score the label directly)",
        judges=HF,
        type=int,
    )
    tie_margin: float | None = option(
        "metrics judge: score difference below which a segment is a tie", judges=METRICS, type=float
    )
    no_reference: bool = option(
        "metrics judge: ignore the manifest's reference videos (no-reference signals only)",
        judges=METRICS,
        flag_only=True,
        kwarg="use_reference",
        to=_false_if_set,
    )
    judge_processes: int | None = option(
        "metrics judge: measure segments in N worker processes, 0 in threads of this process "
        "(same answers; processes use every core, threads about 1.5 of 2). Default: one per CPU "
        "for a labeler.batch manifest of 16 pairs or more, else 0 (a demo, a few pairs, --ray, "
        "the service)",
        judges=METRICS,
        type=int,
        metavar="N",
        kwarg="processes",
    )

    def __post_init__(self) -> None:
        if self.judge not in JUDGE_NAMES:
            raise UsageError(f"unknown judge {self.judge!r}; choose one of {', '.join(JUDGE_NAMES)}")
        self._refuse_unread_options()
        if self.judge != "metrics" and not self.model:
            raise UsageError(f"--judge {self.judge} needs --model")

    def _refuse_unread_options(self) -> None:
        """An option given (not left at its default) that this judge does not read is refused,
        naming the flags and the judges that do read them: accepted and ignored, the user would
        believe it took effect."""
        given = sorted(
            f.name
            for f in _options()
            if self.judge not in f.metadata["judges"] and getattr(self, f.name) not in (None, False)
        )
        if given:
            flags = ", ".join(_flag(name) for name in given)
            readers = sorted({j for j, reads in JUDGE_READS.items() for name in given if name in reads})
            raise UsageError(
                f"{flags}: --judge {self.judge} does not read {'it' if len(given) == 1 else 'them'} "
                f"(options of --judge {' / '.join(readers)})"
            )

    def judge_kwargs(self) -> dict[str, Any]:
        """The judge constructor's keyword arguments (None: the judge's own default)."""
        out: dict[str, Any] = {}
        for f in _options():
            if self.judge in f.metadata["judges"]:
                value = getattr(self, f.name)
                convert = f.metadata["to"]
                out[f.metadata["kwarg"] or f.name] = convert(value) if convert else value
        return out

    def build(self, *, timeout: float | None = None) -> Judge:
        """The judge; ``timeout`` is the engine's per-request timeout, which the API judges' HTTP
        clients use too."""
        extra = {"timeout": timeout} if self.judge in APIS else {}
        return build_judge(self.judge, **self.judge_kwargs(), **extra)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> JudgeConfig:
        """The config of parsed flags (those made by :func:`add_judge_config_arguments`)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _options() -> list[Any]:
    return [f for f in fields(JudgeConfig) if "judges" in f.metadata]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


#: The options each judge reads (field names = argparse dests), from the fields' metadata.
JUDGE_READS: dict[str, frozenset[str]] = {
    judge: frozenset(f.name for f in _options() if judge in f.metadata["judges"]) for judge in JUDGE_NAMES
}


def add_judge_config_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """One ``--flag`` per field of :class:`JudgeConfig`, in field order, with its help."""
    for f in fields(JudgeConfig):
        meta = f.metadata
        if meta.get("flag_only"):
            group.add_argument(_flag(f.name), action="store_true", help=meta["help"])
            continue
        kwargs: dict[str, Any] = {
            "help": meta["help"],
            "default": None if f.default is MISSING else f.default,
        }
        for key in ("type", "choices", "metavar"):
            if meta.get(key) is not None:
                kwargs[key] = meta[key]
        group.add_argument(_flag(f.name), **kwargs)
