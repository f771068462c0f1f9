"""Joining a running Ray cluster (`tune.address`): its authentication token, and errors a user can act on.

Recent Ray starts clusters with token authentication when a token exists where `ray start`
runs (`~/.ray/auth_token`, `RAY_AUTH_TOKEN_PATH` or `RAY_AUTH_TOKEN`), and every process that
joins such a cluster (worker nodes, drivers) needs the same token AND `RAY_AUTH_MODE=token`:
a driver that joins by an explicit address without that mode is refused as unauthenticated.
`join` switches the mode on when a token is found here, so a user only has to bring the token;
when joining fails it says what to do instead of showing Ray's traceback.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ponderlab.core.errors import SpecError

AUTH_MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"

HOW_TO_GET_THE_TOKEN = (
    "copy the cluster's token from the head node (`ray get-auth-token` there prints it) into "
    f"~/.ray/auth_token on this machine, or point {TOKEN_PATH} at a file holding it, or set {TOKEN}; "
    "see 'Running on a Ray cluster' in docs/tune.md"
)


def default_token_file() -> Path:
    """Where Ray looks for a token when no variable names one."""
    return Path.home() / ".ray" / "auth_token"


def find_token() -> str | None:
    """Where this process would take Ray's authentication token from, or None if nowhere."""
    if os.environ.get(TOKEN, "").strip():
        return f"the {TOKEN} variable"
    named = os.environ.get(TOKEN_PATH)
    if named:
        path = Path(named).expanduser()
        return f"{path} ({TOKEN_PATH})" if path.is_file() and path.read_text().strip() else None
    path = default_token_file()
    return str(path) if path.is_file() and path.read_text().strip() else None


def enable_token_mode() -> None:
    """Ask Ray for token authentication in this process (and the processes it starts)."""
    os.environ[AUTH_MODE] = "token"
    try:  # Ray caches its configuration when imported: re-read it from the environment.
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):  # older Ray reads the variable at ray.init
        pass


def forget_cached_token() -> None:
    """Make Ray read its token afresh (variables and files) at the next connection or start.

    Ray caches the token of the first cluster a process meets; a process that joins another
    cluster, or starts a local one afterwards, would otherwise present that stale token.
    """
    try:
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # Ray without token authentication
        pass


def join(address: str, *, option: str = "tune.address", **init_options: Any) -> None:
    """`ray.init(address=...)`, with the token mode set when a token is here; SpecError (exit 2) on failure.

    option: the spec key that gave the address, named in the error.
    """
    import ray

    token = find_token()
    mode = os.environ.get(AUTH_MODE, "").lower()
    if token and not mode:
        enable_token_mode()
        mode = "token"
    forget_cached_token()
    try:
        ray.init(address=address, **init_options)
    except ray.exceptions.AuthenticationError as exc:
        raise SpecError(
            f"cannot join the Ray cluster at {address}: {AUTH_MODE}=token is set but no token was "
            f"found; {HOW_TO_GET_THE_TOKEN}",
            path=option,
        ) from exc
    except ConnectionError as exc:
        if token:
            hint = (
                f"the token taken from {token} may not be this cluster's ({HOW_TO_GET_THE_TOKEN}); "
                "otherwise check the address and that the cluster is running (`ray status` on the head)"
            )
        elif mode == "disabled":
            hint = (
                f"{AUTH_MODE}=disabled is set here: if the cluster uses token authentication, unset it "
                f"and {HOW_TO_GET_THE_TOKEN}; otherwise check the address and that the cluster is running"
            )
        else:
            hint = (
                "no authentication token was found here: if the cluster uses token authentication "
                f"(Ray's default when its head has a token), {HOW_TO_GET_THE_TOKEN}; otherwise check "
                "the address and that the cluster is running (`ray status` on the head)"
            )
        logging.getLogger(__name__).debug("ray.init failed", exc_info=exc)
        raise SpecError(f"cannot join the Ray cluster at {address}: {hint}", path=option) from exc
