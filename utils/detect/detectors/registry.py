"""Detectors by name: the library's backends (``owlv2``, ``detic``), listed here by module path
and imported only when built (transformers and detectron2 are heavy), plug-ins that register
themselves with :func:`register_detector` when imported (the test and example detectors), and
any ``"package.module:callable"`` (a detector that lives outside this project)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from utils.detect.detectors.base import Detector, DetectorError
from utils.records.prompts import label_of

# ---------------------------------------------------------------------------- registry

DetectorFactory = Callable[..., Detector]

_REGISTRY: dict[str, DetectorFactory] = {}
# The library's backends, imported only when asked for (the registry lists no plug-in by name:
# plug-ins register themselves, so this package never names a module above it).
_BUILTIN: dict[str, str] = {
    "owlv2": f"{__package__}.owlv2:OwlV2Detector",
    "detic": f"{__package__}.detic:DeticDetector",
}


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    """Class/function decorator: make ``make_detector(name, ...)`` build it. The factory is
    called as ``factory(class_names, **options)``."""

    def deco(factory: DetectorFactory) -> DetectorFactory:
        existing = _REGISTRY.get(name)
        same = existing is not None and (
            getattr(existing, "__module__", None),
            getattr(existing, "__qualname__", None),
        ) == (getattr(factory, "__module__", None), getattr(factory, "__qualname__", None))
        if existing is not None and not same:  # re-registering on module reload is fine
            raise ValueError(f"a detector named {name!r} is already registered ({existing!r})")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_detectors() -> list[str]:
    """Registered and built-in detector names."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def _import_callable(target: str, what: str) -> DetectorFactory:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {target!r} is not of the form 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DetectorError(f"cannot import module {module_name!r} for {what} {target!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise DetectorError(f"module {module_name!r} has no attribute {attr!r} ({what} {target!r})") from exc
    if not callable(obj):
        raise DetectorError(f"{what} {target!r} is not callable")
    return obj


def _resolve(spec: str) -> DetectorFactory:
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if spec in _BUILTIN:
        factory = _import_callable(_BUILTIN[spec], "built-in detector")
        _REGISTRY.setdefault(spec, factory)
        return factory
    if ":" in spec:
        return _import_callable(spec, "detector")
    raise ValueError(
        f"unknown detector {spec!r}: choose one of {', '.join(available_detectors())}, "
        "or give 'package.module:callable'"
    )


def detector_factory(spec: str) -> DetectorFactory:
    """The factory :func:`make_detector` would call for ``spec`` (e.g. to see which options
    it accepts); raises like :func:`make_detector` for unknown or unimportable specs."""
    return _resolve(spec)


def make_detector(spec: str, class_names: Sequence[str], **options: Any) -> Detector:
    """Build a detector from a registered name or ``"package.module:callable"``.

    The factory is called as ``factory(list(class_names), **options)``; options it does not
    accept raise ``ValueError`` naming them. The result must have a ``detect`` method.
    """
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"detector spec must be a non-empty string, got {spec!r}")
    class_names = [str(c) for c in class_names]
    if not class_names:
        raise ValueError("a detector needs at least one class name")
    factory = _resolve(spec)
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(class_names, **options)
        except TypeError as exc:
            params = [p for p in sig.parameters if p not in ("self", "class_names")]
            raise ValueError(
                f"detector {spec!r} does not accept options {sorted(options)}: {exc}. Accepted: {params}"
            ) from exc
    detector = factory(class_names, **options)
    if not callable(getattr(detector, "detect", None)):
        raise TypeError(f"detector {spec!r} built {type(detector).__name__}, which has no detect() method")
    return detector


def build_text_encoder(spec: str, prompts: Sequence[str], weights: str | None = None, device: str = "cpu") -> Detector:
    """The detector ``spec`` (a registry name or ``package.module:callable``) over ``prompts``,
    built to encode text: with the weights id that made the embeddings (``weights`` for DETIC,
    ``model_id`` for the others, when the factory takes it) and ``device``. Options the factory
    does not take are left out; a factory that has no weights option cannot honour ``weights``
    and is refused."""
    factory = _resolve(spec)
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        accepts: Callable[[str], bool] = (lambda _: True) if takes_all else params.__contains__
    except (TypeError, ValueError):
        accepts = lambda _: True  # noqa: E731 (uninspectable factory: offer everything)
    prompts = [str(p) for p in prompts]
    options: dict[str, Any] = {k: v for k, v in {"prompts": prompts, "device": device}.items() if accepts(k)}
    if weights is not None:
        key = "weights" if spec == "detic" else "model_id"
        if not accepts(key):
            raise DetectorError(f"detector {spec!r} takes no {key!r} option: cannot load the weights {weights!r}")
        options[key] = weights
    return make_detector(spec, [label_of(p) for p in prompts], **options)
