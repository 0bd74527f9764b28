"""Running a validated spec: every model and explainer set up before the first map, then
the cases grouped by model, each case's map computed once and shared by its checks."""

from __future__ import annotations

import copy
import functools
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import engine, names, render
from ..explainer import Explainer, Loader, PreparedModel
from ..images import ImageError, load_image
from ..models import load_model
from ..settings import MapSettings, SettingsError
from .checks import CaseMap, Golden, Subject, read_golden, run_checks
from .golden_paths import golden_target
from .reports import CheckResult, CheckRun
from .spec import Case, Spec, SpecError
from .values import Where, case_label


def randomisable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and linear layers (modules owning a weight of 2 or more dimensions), from the
    input to the output in the order the model registers them."""
    layers = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is not None and weight.dim() >= 2:
            layers.append((name, module))
    return layers


def randomised_copy(model: nn.Module, count: int, seed: int) -> tuple[nn.Module, list[str]]:
    """A deep copy of ``model`` whose top ``count`` layers are re-drawn at random.

    Each parameter of those layers (weight and bias) is replaced by Gaussian values with its
    own mean and standard deviation, so activations keep their scale (Adebayo et al. re-draw
    from the layers' initialisation). The values come from a seeded CPU generator: the same on
    every device. ``model`` itself is never modified.
    """
    clone = copy.deepcopy(model)
    layers = randomisable_layers(clone)
    chosen = layers[len(layers) - count :]
    with torch.no_grad():
        for index, (_, module) in enumerate(reversed(chosen)):
            for p_index, param in enumerate(module.parameters(recurse=False)):
                generator = torch.Generator().manual_seed(
                    engine.sample_seed(seed, 1_000_003 * (index + 1) + p_index)
                )
                source = param.detach().float().cpu()
                std = float(source.std()) if source.numel() > 1 else 0.0
                fresh = torch.randn(source.shape, generator=generator) * std + float(source.mean())
                param.copy_(fresh.to(device=param.device, dtype=param.dtype))
    return clone, [name for name, _ in chosen]


class _deterministic:
    """cuDNN in deterministic mode for the run (same seed, same map on one GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        self.saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        return self

    def __exit__(self, *exc):
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.saved
        return False


def _map_key(explainer: Explainer) -> MapSettings:
    """What decides a map of the explainer's, to share it between cases: the resolved
    precision, not the spec's word for it, and neither the chunk size nor how the target
    was named (the class index goes beside it in the key)."""
    return explainer.settings.replace(precision=explainer.precision, batch_size=None, target=None)


class Checker:
    """Runs a validated spec. ``loader`` builds models (tests pass a cached one).

    With ``update_golden`` the goldens are written instead of compared, only inside the
    spec's folder unless ``allow_outside_spec_folder`` (see ``golden_paths.golden_target``).
    """

    def __init__(
        self,
        spec: Spec,
        *,
        device: str | None = None,
        update_golden: bool = False,
        allow_outside_spec_folder: bool = False,
        log: Callable[[str], None] | None = None,
        verbose: bool = False,
        loader: Loader = load_model,
    ) -> None:
        self.spec = spec
        self.device_text = device or spec.device
        self.device_from_cli = device is not None
        self.update_golden = update_golden
        self.allow_outside_spec_folder = allow_outside_spec_folder
        self.log = log or (lambda message: None)
        self.verbose = verbose
        self.loader = loader
        self.shown_spec = names.shown(spec.path)
        self.where = {c.name: Where(self.shown_spec, case_label(c.name)) for c in spec.cases}

    def _setting_error(self, case: Case, key: str, detail: str) -> SpecError:
        if case.setting_origin.get(key) == "defaults":
            return Where(self.shown_spec, "defaults").error(key, detail)
        return self.where[case.name].error(key, detail)

    def _golden_target(self, case: Case) -> Path:
        return golden_target(
            self.spec, case, allow_outside_spec_folder=self.allow_outside_spec_folder
        )

    # set-up: everything that can make the spec invalid is found before any map is computed
    def prepare(self) -> None:
        try:
            self.device = engine.resolve_device(self.device_text)
        except ValueError as exc:
            if self.device_from_cli:
                raise SpecError(f"--device: {exc}") from None
            raise Where(self.shown_spec, "defaults").error("device", str(exc)) from None
        # Before any model is loaded: a spec that may not write its goldens fails at once.
        if self.update_golden:
            for case in self.spec.cases:
                if case.golden is not None:
                    self._golden_target(case)
        self.models: dict[tuple[str, str | None], PreparedModel] = {}
        self.n_layers: dict[tuple[str, str | None], int] = {}
        # One explainer per distinct settings, shared by its cases (and its noise bank).
        by_settings: dict[MapSettings, Explainer] = {}
        self.explainers: dict[str, Explainer] = {}
        self.expected: dict[str, list[int]] = {}
        for case in self.spec.cases:
            s = case.settings
            try:
                if s.model_key not in self.models:
                    prepared = PreparedModel.load(
                        s.model, s.weights, self.device, self.loader, labels=s.labels
                    )
                    self.models[s.model_key] = prepared
                    self.n_layers[s.model_key] = len(randomisable_layers(prepared.model))
                if s not in by_settings:
                    by_settings[s] = Explainer(s, self.models[s.model_key])
            except SettingsError as err:
                raise self._setting_error(case, err.key, err.message(err.key)) from None
            explainer = self.explainers[case.name] = by_settings[s]
            for warning in s.warnings(option="noise"):
                self.log(f"warning: {case_label(case.name)}: {warning}")
            loaded = explainer.loaded
            if case.expect_class is not None:
                try:
                    self.expected[case.name] = [
                        loaded.class_index(str(c)) for c in case.expect_class
                    ]
                except ValueError as exc:
                    raise self.where[case.name].error("expect_class", str(exc)) from None
                n_classes = len(loaded.categories)
                if case.top_k > n_classes:
                    raise self.where[case.name].error(
                        "top_k", f"{case.top_k} exceeds the model's {n_classes} classes"
                    )
            if case.sanity is not None:
                n_layers = self.n_layers[s.model_key]
                count = case.sanity.count(n_layers)
                if count > n_layers or n_layers == 0:
                    raise self.where[case.name].error(
                        "sanity.layers",
                        f"{count} asked for, but {s.model} has {n_layers} conv/linear layers",
                    )

    def run(self) -> CheckRun:
        started = time.perf_counter()
        self.prepare()
        run = CheckRun(device=str(self.device))
        by_case: dict[str, list[CheckResult]] = {}
        # Cases grouped by model, each model's cases in spec order; results in spec order.
        order = sorted(
            range(len(self.spec.cases)),
            key=lambda i: (list(self.models).index(self.spec.cases[i].settings.model_key), i),
        )
        self._maps: dict[tuple, CaseMap] = {}
        self._random: dict[tuple, nn.Module] = {}
        current_model = None
        with _deterministic(self.device):
            for number, index in enumerate(order, start=1):
                case = self.spec.cases[index]
                if current_model is not None and case.settings.model_key != current_model:
                    self._maps.clear()
                    self._random.clear()  # a model's randomised copies go with its group
                current_model = case.settings.model_key
                t0 = time.perf_counter()
                results = self._run_case(case, run)
                seconds = time.perf_counter() - t0
                # The last case of its settings frees the explainer, and its noise bank.
                del self.explainers[case.name]
                for r in results:
                    r.seconds = seconds / max(1, len(results))
                    r.image = str(case.image)
                by_case[case.name] = results
                failed = sum(not r.passed for r in results)
                verdict = "ok" if not failed else f"{failed} of {len(results)} failed"
                self.log(
                    f"[{number}/{len(order)}] {names.shown(case.name)}: {verdict} ({seconds:.1f} s)"
                )
        for case in self.spec.cases:
            run.results.extend(by_case[case.name])
        run.seconds = time.perf_counter() - started
        return run

    def _run_case(self, case: Case, run: CheckRun) -> list[CheckResult]:
        checks = case.check_names()
        try:
            return self._checks(case, run)
        except ImageError as exc:
            message = f"{names.shown(case.image)}: image could not be loaded: {names.one_line(exc)}"
            self.log(f"error: {message}")
            return [
                CheckResult(case.name, name, False, "image failed", "", message=message)
                for name in checks
            ]
        except Exception as exc:  # a failure inside one case must not hide the others
            message = f"{type(exc).__name__}: {names.one_line(exc)}"
            self.log(f"error: {case_label(case.name)}: {message}")
            if self.verbose:
                self.log("".join(traceback.format_exception(exc)).rstrip())
            return [
                CheckResult(case.name, name, False, "error", "", message=message) for name in checks
            ]

    def _checks(self, case: Case, run: CheckRun) -> list[CheckResult]:
        explainer = self.explainers[case.name]
        loaded = explainer.loaded
        photo = load_image(case.image)
        x = explainer.transform(photo)[None]
        probs = explainer.predict(x)[0]
        order = torch.argsort(probs, descending=True)
        target = explainer.target if explainer.target is not None else int(order[0])
        if self.verbose:
            top = ", ".join(f"{loaded.categories[int(i)]} {float(probs[i]):.3f}" for i in order[:5])
            self.log(
                f"{names.shown(case.name)}: top-5 {top}; map of {loaded.categories[target]} "
                f"({target})"
            )

        def case_map() -> CaseMap:
            return self._map(case, explainer, x, target, None)

        def randomised_map() -> CaseMap:
            s = case.settings
            count = case.sanity.count(self.n_layers[s.model_key])
            key = (s.model_key, count, s.seed)
            if key not in self._random:
                self._random[key] = randomised_copy(explainer.model, count, s.seed)[0]
            return self._map(case, explainer, x, target, key)

        @functools.cache  # once per case: writing a golden happens once
        def golden() -> Golden:
            if self.update_golden:
                return self._write_golden(case, case_map(), run)
            return read_golden(case, case_map(), self.shown_spec)

        subject = Subject(
            case=case,
            categories=loaded.categories,
            probabilities=probs,
            order=order,
            expected=self.expected.get(case.name, []),
            view=loaded.crop_box(*photo.size),
            map=case_map,
            randomised_map=randomised_map,
            golden=golden,
        )
        return run_checks(subject)

    def _map(self, case: Case, explainer: Explainer, x, target: int, random_key) -> CaseMap:
        key = (_map_key(explainer), str(case.image.resolve()), target, random_key)
        if key not in self._maps:
            model = None if random_key is None else self._random[random_key]
            maps, convergence = explainer.attributions(x, [[target]], model=model)
            self._maps[key] = CaseMap.of(maps[0, 0], convergence and convergence[0][0])
        return self._maps[key]

    def _write_golden(self, case: Case, cmap: CaseMap, run: CheckRun) -> Golden:
        shown = names.shown(case.golden)
        try:
            # Checked again: the folder may have changed while the maps were computed.
            target = self._golden_target(case)
        except SpecError as exc:
            return Golden(measured="not written", message=str(exc))
        render.save_npy(cmap.attribution, target)
        run.written.append(case.golden)
        self.log(f"wrote golden map {shown}")
        return Golden(passed=True, measured="written", message=f"golden map written to {shown}")


__all__ = ["Checker", "randomisable_layers", "randomised_copy"]
