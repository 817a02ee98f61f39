"""The data dir: private from the start, and checked on every start.

The data dir holds the SQLite database (API key hashes, webhook secrets, prompts of async
requests, playground conversations), `admin.key`, and the deployments' worker logs and
models. Nothing in it is meant for other users of the host.

What `prepare_data_dir` does, and why:

- A data dir that does not exist yet is created 0700, and `deployments/` in it 0700.
- The SQLite database file is created 0600 before SQLAlchemy opens it (SQLite gives its
  `-wal` and `-shm` files the database file's mode), with `os.open`, so it is never
  readable by others, not even for a moment. `admin.key` is written 0600 by
  `torpor.auth.bootstrap_admin`.
- On every start the modes are checked. An existing data dir that other users may enter
  is reported, not changed: the operator chose that directory (a shared mount, a
  group-managed path), and changing the mode of a directory torpor did not create could
  break something else. The files and the `deployments/` dir inside it are torpor's own
  and hold secrets, so a looser mode there (a data dir from an older torpor, a restored
  backup) is tightened to 0600 / 0700 and reported too, never silently.

The process umask is never changed (it is process-wide, and other threads may be creating
files): modes are passed to `mkdir`/`os.open` and then set with `chmod`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url

DIR_MODE = 0o700
FILE_MODE = 0o600
ADMIN_KEY_FILE = "admin.key"
DEPLOYMENTS_DIR = "deployments"
_SQLITE_SIDECARS = ("-wal", "-shm", "-journal")


def looser_than(mode: int, wanted: int) -> bool:
    """Whether `mode` grants any permission bit that `wanted` does not."""
    return bool(stat.S_IMODE(mode) & ~wanted)


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL; None for other databases and in-memory SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _mode_text(mode: int) -> str:
    return f"{stat.S_IMODE(mode):04o}"


def _tighten(path: Path, wanted: int) -> str | None:
    """chmod an existing torpor-owned path to `wanted` when looser; the warning, if any."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if not looser_than(mode, wanted):
        return None
    os.chmod(path, wanted)
    return (
        f"{path} had mode {_mode_text(mode)}, readable by other users; changed it to {wanted:04o}"
    )


def prepare_data_dir(data_dir: Path, database_url: str) -> list[str]:
    """Create the data dir and the SQLite file private, check the modes of what exists.

    Returns the warnings to log (each names a path and its mode); see the module docstring
    for what is changed and what is only reported.
    """
    warnings: list[str] = []
    if data_dir.exists():
        mode = data_dir.stat().st_mode
        if looser_than(mode, DIR_MODE):
            warnings.append(
                f"data dir {data_dir} has mode {_mode_text(mode)}: other users of this host "
                f"may read what it holds (worker logs with prompts, models); "
                f"`chmod 700 {data_dir}` makes it private"
            )
    else:
        data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(data_dir, DIR_MODE)

    deployments = data_dir / DEPLOYMENTS_DIR
    if deployments.exists():
        warnings += filter(None, [_tighten(deployments, DIR_MODE)])
    else:
        deployments.mkdir(mode=DIR_MODE, exist_ok=True)
        os.chmod(deployments, DIR_MODE)

    secrets = [data_dir / ADMIN_KEY_FILE]
    db = sqlite_path(database_url)
    if db is not None:
        if not db.exists() and db.parent.is_dir():
            # Created here, empty (SQLite takes an empty file as a new database), so that
            # it is 0600 from its first byte; O_CREAT without O_TRUNC never clobbers one
            # that another torpor process created meanwhile.
            fd = os.open(db, os.O_RDWR | os.O_CREAT, FILE_MODE)
            os.close(fd)
        secrets += [db, *(db.with_name(db.name + s) for s in _SQLITE_SIDECARS)]
    warnings += filter(None, (_tighten(path, FILE_MODE) for path in secrets))
    return warnings
