"""Folders private to their owner.

The data folder holds Label Studio's database (the API token, the ML backend's password, the webhook's
auth header), the credentials files and the registry: nobody else may enter it.
"""

from __future__ import annotations

import stat
from pathlib import Path

#: Mode of a private folder: only its owner may list, read or enter it.
PRIVATE_MODE = 0o700
#: umask of the child servers (Label Studio): files they create are readable by their owner only.
PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700; missing parents as usual) or tighten an existing folder to 0700.

    Files inside cannot be reached by other users whatever their own mode, since nobody else may enter
    the folder.

    Raises:
        PermissionError: if the folder belongs to another user, naming it and what to do.
    """
    path.mkdir(mode=PRIVATE_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_MODE:
        try:
            path.chmod(PRIVATE_MODE)
        except PermissionError:
            raise PermissionError(
                f"{path} holds geolabel's secrets but belongs to another user, so it cannot be made private "
                "(chmod 0700); choose a data folder of your own (paths.data_dir) or ask its owner"
            ) from None
    return path
