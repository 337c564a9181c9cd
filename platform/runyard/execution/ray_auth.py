"""Ray's token authentication and addresses, as every runyard client of a cluster uses them.

Token auth stays on (`ray start --head` turns it on in Ray 2.60): an open Jobs API runs
anyone's code.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def auth_token() -> str | None:
    """The Ray token, looked up where Ray looks: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    with contextlib.suppress(OSError):
        return path.read_text().strip() or None
    return None


def auth_headers() -> dict[str, str]:
    """An explicit bearer header for Ray's HTTP clients.

    Ray adds one itself only if RAY_AUTH_MODE=token was set before Ray first read
    its config in this process; passing it explicitly does not depend on that.
    """
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def explicit_address() -> Iterator[None]:
    """Ray's HTTP clients let RAY_ADDRESS / RAY_API_SERVER_ADDRESS override the address
    they are given (inside a Ray job RAY_ADDRESS is always set): hide them meanwhile."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
