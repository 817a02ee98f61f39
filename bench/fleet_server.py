"""`torpor serve` on the fake runtime, for the control-plane benchmark only:
`python -m bench.fleet_server --data-dir DIR --port P`.

torpor has no setting to pick a runtime yet, so this swaps the runtime class that
Services.start builds before the app starts. Nothing else differs from `torpor serve`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torpor.services
from torpor.runtime.fake import FakeRuntime
from torpor.server import serve
from torpor.settings import Settings


def _fake_runtime(*_args: Any, **_kwargs: Any) -> FakeRuntime:
    return FakeRuntime()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    setattr(torpor.services, "LocalRuntime", _fake_runtime)  # noqa: B010
    settings = Settings(data_dir=args.data_dir, port=args.port, create_default_deployment=False)
    serve(settings)


if __name__ == "__main__":
    main()
