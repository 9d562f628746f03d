"""`python -m deploy check`: what a deploy needs, checked offline (no token, no network, no GPU).

Builds both apps' definitions (imports `modal_api.py` and `modal_app.py` as `modal deploy` does) and checks:
torch pinned in the GPU image, the page's vendor files built and shipped with `app/`, every allowed `SHARP_*`
setting (`deploy.config.BAKED_SETTINGS`) reaching the containers' environment, each value baked from this
shell valid in a GPU container (`deploy.config.baked_problems`: the device, the checkpoint's path, the
queue against the concurrency), and each class and function described from the Modal objects themselves
(`describe`, also used by the parity test). Refuses (exit 1) with one `error:` line per problem.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import modal
from modal._partial_function import _find_partial_methods_for_user_cls
from modal._partial_function import _PartialFunctionFlags as Flags
from modal._utils.async_utils import synchronizer

from deploy import config

APP_MODULES = ("modal_api", "modal_app")


def _dependency(obj: Any) -> str:
    """A dependency as Modal sees it: its type and what names it (a Secret's or Volume's name, a mount's files)."""
    impl = synchronizer._translate_in(obj)
    return f"{type(impl).__name__.lstrip('_')}:{impl._rep}"


def _image_name(image: Any) -> str:
    from deploy import images

    return next((name for name in ("gpu_image", "light_image")
                 if synchronizer._translate_in(getattr(images, name)) is image), repr(image))


def describe(module: ModuleType) -> dict[str, dict[str, Any]]:
    """Every Modal function and class of a deploy file: the dependencies Modal checks a container against
    (`_deps_(only_explicit_mounts=True)`, what its entrypoint counts), the options of `Function.info()`,
    the image and the start-up hooks; JSON-ready."""
    described: dict[str, dict[str, Any]] = {}
    for obj in vars(module).values():
        if isinstance(obj, modal.Cls):
            function = synchronizer._translate_in(obj)._get_class_service_function()
            user_cls = synchronizer._translate_in(obj)._get_user_cls()
            hooks = {flag.name: sorted(_find_partial_methods_for_user_cls(user_cls, flag))
                     for flag in (Flags.ENTER_PRE_SNAPSHOT, Flags.ENTER_POST_SNAPSHOT, Flags.EXIT)}
        elif isinstance(obj, modal.Function):
            function, hooks = synchronizer._translate_in(obj), {}
        else:
            continue
        info = synchronizer._translate_out(function).info()
        described[function._tag] = {
            "dependencies": [_dependency(dep) for dep in function._deps_(only_explicit_mounts=True)],
            "info": json.loads(json.dumps(dataclasses.asdict(info), default=str)),
            "image": _image_name(function._spec_.image),
            "hooks": hooks,
        }
    return described


def problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """What would make a deploy from `environ` (default: this process's environment) fail or ship something
    broken, one line each; empty when all is well."""
    found: list[str] = []
    try:
        torch = config.torch_requirement()
        if "==" not in torch:
            found.append(f"torch is not pinned: {torch}")
    except (KeyError, RuntimeError) as error:
        found.append(f"torch is not pinned in pyproject.toml's {config.TESTED_TORCH_EXTRA} extra: {error}")
    missing = config.missing_vendor_files()
    if missing:
        found.append(f"the page's vendor files are missing ({', '.join(missing)}): run `make web`")

    from deploy.images import _not_shipped

    static = config.ROOT / "app" / "web" / "static"
    unshipped = [str(p.relative_to(config.ROOT)) for p in static.rglob("*")
                 if p.is_file() and _not_shipped(p.relative_to(config.ROOT))]
    if unshipped:
        found.append(f"page files left out of the image: {unshipped}")

    from app.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    fields = {f"{prefix}{name}".upper() for name in Settings.model_fields}
    if set(config.settings_env_names()) != fields:
        differ = sorted(fields ^ set(config.settings_env_names()))
        found.append(f"deploy reads other settings than Settings has: {differ}")
    unknown = sorted(set(config.BAKED_SETTINGS) - fields)
    if unknown:
        found.append(f"deploy.config.BAKED_SETTINGS names settings that do not exist: {unknown}")
    for name in (*config.BAKED_SETTINGS, *config.DEPLOY_SWITCHES):
        if config.container_env({name: "1"}).get(name) != "1":
            found.append(f"{name} set at deploy time does not reach the containers")
    leaked = [name for name in config.NOT_PASSED if config.container_env({name: "/x"}).get(name) == "/x"]
    if leaked:
        found.append(f"baked into the image though it must not be: {leaked}")
    found += config.baked_problems(config.container_env(environ))

    for module_name in APP_MODULES:
        try:
            module = importlib.import_module(module_name)
            for tag, spec in describe(module).items():
                if spec["info"]["gpus"] and spec["image"] != "gpu_image":
                    found.append(f"{module_name}.{tag}: a GPU class without the GPU image")
        except Exception as error:
            found.append(f"{module_name}: cannot build its definitions: {type(error).__name__}: {error}")
    return found


def main() -> int:
    found = problems()
    for problem in found:
        print(f"error: {problem}")
    if not found:
        print(f"deploy check: ok ({', '.join(f'{m}.py' for m in APP_MODULES)}; torch {config.torch_requirement()}; "
              f"{len(config.vendor_files())} vendor files; root {Path(config.ROOT).name})")
    return 1 if found else 0
