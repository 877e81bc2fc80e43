"""The dev platform's data folder: its files (state, credentials, the KEK, the lock),
written atomically, and the errors and messages every part of ``meridian dev`` shares."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meridian.settings import Settings
from tenancy.keyring import LocalKeyProvider

Json = dict[str, Any]


class DevError(Exception):
    """Something the user can fix; the CLI prints it without a traceback."""


def say(message: str) -> None:
    print(message, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class DataDir:
    """Where a dev platform keeps its files: under its data folder, except the dev.json
    that tools find in the folder `meridian dev` runs from."""

    data: Path

    @property
    def state(self) -> Path:  # ports and bootstrap progress (no secrets)
        return self.data / "state.json"

    @property
    def credentials(self) -> Path:
        return self.data / "credentials.json"

    @property
    def lock(self) -> Path:
        return self.data / "dev.lock"

    @property
    def kek(self) -> Path:  # the local key-encryption key (mode 0600)
        return self.data / "kek"

    @property
    def pg(self) -> Path:
        return self.data / "pg"

    @property
    def redis(self) -> Path:
        return self.data / "redis"

    @property
    def dev_json(self) -> Path:
        # Tools run from the project directory find the running platform here.
        return Path.cwd() / ".meridian" / "dev.json"


def load_json(path: Path) -> Json:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DevError(f"{path} is unreadable ({exc}); fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def save_json(path: Path, data: Json, *, private: bool = False) -> None:
    """Write atomically (a crash never leaves half a file); ``private`` means mode 0600."""
    mode = 0o600 if private else 0o644
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)  # the mode given to open() is masked by the umask
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def ensure_kek(path: Path) -> Path:
    """The dev platform's key-encryption key, made on first run and kept: losing it
    would make every encrypted field of the local data unreadable."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)  # the mode given to open() is masked by the umask
            f.write(LocalKeyProvider.generate_secret() + "\n")
    return path


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    with lock.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DevError(f"another `meridian dev` is using {lock.parent}; stop it first") from exc
        yield


def adopt_kek(dev_json: Path, settings: Settings) -> Path:
    """Make the KEK of ``settings`` the dev platform's own, after ``keys rotate-kek``
    re-wrapped its tenants' keys under it: the dev.json and the data folder's state name
    its file, so `meridian dev` and later commands unwrap the keys with it. A KEK given
    inline (MERIDIAN_KEK) is written to a private file in the data folder first."""
    info = load_json(dev_json)
    if not info.get("data_dir"):
        raise DevError(f"{dev_json} does not name its data folder; restart `meridian dev`")
    paths = DataDir(Path(info["data_dir"]))
    if settings.kek is not None:
        provider = settings.key_provider()
        kek_file = paths.data / f"kek-{provider.primary_id}"
        fd = os.open(kek_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(settings.kek.get_secret_value() + "\n")
    elif settings.kek_file is not None:
        kek_file = settings.kek_file.resolve()
    else:
        raise DevError("no KEK is configured")
    info["kek_file"] = str(kek_file)
    save_json(dev_json, info, private=True)
    state = load_json(paths.state)
    state["kek_file"] = str(kek_file)
    save_json(paths.state, state)
    return kek_file
