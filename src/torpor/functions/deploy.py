"""Deploying an app from the caller's side: images first (each built once on the server),
then one deployment per function, created or updated in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torpor.sdk.client import Client
from torpor.sdk.errors import NotFoundError
from torpor.sdk.models import Deployment, ImageInfo

if TYPE_CHECKING:
    from torpor.functions.app import App

FRAMEWORK = "function"


def deploy_app(
    app: App, client: Client, on_log: Callable[[str], None] | None, timeout: float
) -> list[Deployment]:
    images: dict[str, ImageInfo] = {}
    for item in app.functions.values():
        image = item.image
        if image.id not in images:
            if on_log is not None:
                on_log(f"image {image.id}: {', '.join(image.packages) or 'no packages'}")
            images[image.id] = client.build_image(image.definition(), on_log, image.contents())
    names: list[str] = []
    for item in app.functions.values():
        built = images[item.image.id]
        spec = item.deploy_spec(built.python, built.container)
        _apply(client, spec)
        names.append(spec["name"])
        if on_log is not None:
            on_log(f"deployed {app.name}.{item.attr} as {spec['name']}")
    return [client.wait_until_ready(name, timeout) for name in names]


def _apply(client: Client, spec: dict[str, Any]) -> Deployment:
    """Create the deployment, or change the existing one to `spec` (an unchanged spec
    changes nothing: running workers stay)."""
    name = spec["name"]
    try:
        current = client.get_deployment(name)
    except NotFoundError:
        return client.create_deployment(spec)
    if current.framework != FRAMEWORK:
        raise ValueError(f"deployment {name} exists and is not a function ({current.framework})")
    return client.update_deployment(name, {k: v for k, v in spec.items() if k != "name"})


def app_deployments(client: Client) -> dict[str, list[Deployment]]:
    """Function deployments by app name."""
    apps: dict[str, list[Deployment]] = {}
    for dep in client.list_deployments():
        if dep.framework == FRAMEWORK:
            apps.setdefault(str(dep.options.get("app", "?")), []).append(dep)
    return apps


def delete_app(app: str, client: Client) -> list[str]:
    names = [d.name for d in app_deployments(client).get(app, [])]
    for name in names:
        client.delete_deployment(name)
    return names
