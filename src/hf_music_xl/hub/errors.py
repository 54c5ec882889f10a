"""Hub errors a person can act on: one line for an unreachable or wrong ``HF_ENDPOINT``, a missing or invalid token,
a repository that does not exist or is not yours, instead of an HTTP client's traceback.

    with hub_errors("you/chorale-xl"):
        api.create_repo(...)            # raises HubAccessError("cannot reach the Hub at ...: ...")

Commands that load a model by Hub id first call ``check_model_access`` (one request, no retries), so a wrong
address fails at once rather than after huggingface_hub's retries, and a model already in the local cache is
still used when the Hub cannot be reached.
"""

import contextlib
import logging

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

logger = logging.getLogger(__name__)

# httpx2's (huggingface_hub's client) and httpx's errors for an address that cannot be reached or used
UNREACHABLE = {
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "WriteTimeout",
    "PoolTimeout",
    "RemoteProtocolError",
    "ReadError",
}
BAD_ADDRESS = {"UnsupportedProtocol", "InvalidURL", "LocalProtocolError"}


NO_TOKEN = (
    "the Hub at {endpoint} needs a token and none is set: run `hf auth login` or set HF_TOKEN (a write token to push)"
)


class HubAccessError(Exception):
    """A Hub problem explained in one line (what happened and what to do)."""


def causes(error: BaseException):
    """The error and everything it was raised from or during, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def explain(error: BaseException, repo_id: str | None = None) -> str | None:
    """One line for a Hub error anywhere in ``error``'s chain, or None when it is not one."""
    endpoint, repo = constants.ENDPOINT, repo_id or "the repository"
    for cause in causes(error):
        name = type(cause).__name__
        if name in BAD_ADDRESS:
            return (
                f"HF_ENDPOINT={endpoint!r} is not a usable address ({cause}): it must look like https://huggingface.co"
            )
        if name in UNREACHABLE:
            return (
                f"cannot reach the Hub at {endpoint} ({cause or name}): "
                "check your network, or HF_ENDPOINT if you set it"
            )
        if isinstance(cause, LocalTokenNotFoundError):
            return NO_TOKEN.format(endpoint=endpoint)
        if isinstance(cause, OfflineModeIsEnabled):
            return (
                f"{repo} is not in the local cache and HF_HUB_OFFLINE=1 forbids asking the Hub: "
                "unset it or download the model first"
            )
        if isinstance(cause, GatedRepoError):
            return (
                f"{repo} is gated on {endpoint}: ask for access on its page, "
                "then use a token of the account that has it"
            )
        if isinstance(cause, RevisionNotFoundError):
            return f"{repo} has no such branch or revision on {endpoint}"
        if isinstance(cause, RepositoryNotFoundError):
            return (
                f"{repo} was not found on {endpoint}: it does not exist, "
                f"or it is private and your token cannot see it ({token_state()})"
            )
        if isinstance(cause, HfHubHTTPError) and cause.response is not None:
            return explain_status(cause, endpoint, repo)
    return None


def explain_status(error: HfHubHTTPError, endpoint: str, repo: str) -> str:
    status, url = error.response.status_code, str(error.response.url)
    if status == 401:
        if get_token() is None:
            return NO_TOKEN.format(endpoint=endpoint)
        return (
            f"the Hub at {endpoint} refused your token (401): "
            "HF_TOKEN or the token saved by `hf auth login` is invalid or expired"
        )
    if status == 403:
        return (
            f"your token may not write to {repo} (403): it is not in your namespace, "
            "or the token is read-only; push to a repo of your own"
        )
    if status in (404, 405, 501) and not error.response.headers.get("X-Error-Code"):
        return f"{endpoint} does not answer like the Hugging Face Hub ({status} for {url}): check HF_ENDPOINT"
    server_message = (getattr(error, "server_message", None) or "").strip().splitlines()
    return f"the Hub at {endpoint} answered {status} for {url}" + (f": {server_message[0]}" if server_message else "")


def token_state() -> str:
    return "no token is set" if get_token() is None else "a token is set"


@contextlib.contextmanager
def hub_errors(repo_id: str | None = None):
    """Turn a Hub error raised inside into ``HubAccessError`` with one line; other errors pass unchanged."""
    try:
        yield
    except HubAccessError:
        raise
    except Exception as error:
        message = explain(error, repo_id)
        if message is None:
            raise
        raise HubAccessError(message) from error


def check_model_access(repo_id: str) -> bool:
    """Before loading ``repo_id`` from the Hub: one request that fails clearly (``HubAccessError``). Returns True
    when the Hub cannot be reached but the model is in the local cache, so that it loads from there."""
    if constants.HF_HUB_OFFLINE:
        return True
    try:
        with hub_errors(repo_id):
            HfApi().model_info(repo_id, files_metadata=False)
    except HubAccessError as error:
        if any(type(cause).__name__ in UNREACHABLE for cause in causes(error)) and in_cache(repo_id):
            logger.warning("%s; using the copy of %s in the local cache", error, repo_id)
            return True
        raise
    return False


def in_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
