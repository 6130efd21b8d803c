"""The vendors' credentials: from the environment, or a ``--source-credentials`` file, and nowhere else.

They are never part of a URI (refused when parsed), never written to the work directory, never printed:
every text a server sends back passes through :meth:`Credentials.scrub` before it is shown.

A credentials file holds the same names as the environment, one ``NAME=value`` a line (``export`` before
it, quotes around the value and ``#`` comments are allowed), so the same file can be ``source``d by a shell.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

from posthog_migrate.errors import ConfigError
from posthog_migrate.pull.sources import ApiSource

AMPLITUDE_NAMES = ("AMPLITUDE_API_KEY", "AMPLITUDE_SECRET_KEY")
MIXPANEL_SERVICE_NAMES = ("MIXPANEL_SERVICE_ACCOUNT", "MIXPANEL_SERVICE_SECRET")
MIXPANEL_SECRET_NAME = "MIXPANEL_API_SECRET"
KNOWN_NAMES = (*AMPLITUDE_NAMES, *MIXPANEL_SERVICE_NAMES, MIXPANEL_SECRET_NAME)
WHERE_TO_FIND = {
    "amplitude": "Amplitude: Settings → Organization settings → Projects → your project → General: API Key and "
                 "Secret Key",
    "mixpanel": "Mixpanel: Organization settings → Service accounts (give the account access to the project), or "
                "Project settings → Access keys → Project secret (legacy)",
}
REPLACEMENT = "…"


@dataclass(frozen=True)
class Credentials:
    """The values found, by name. ``repr`` shows the names only."""

    values: dict[str, str]

    def __repr__(self) -> str:
        return f"Credentials({sorted(self.values)})"

    def basic_auth(self, source: ApiSource) -> tuple[str, str]:
        """(user, password) for HTTP Basic: Amplitude's key:secret; Mixpanel's service account:secret (which needs
        project_id), else its legacy API secret with an empty password."""
        if source.vendor == "amplitude":
            missing = [name for name in AMPLITUDE_NAMES if not self.values.get(name)]
            if missing:
                raise ConfigError(f"no Amplitude credentials: set {' and '.join(missing)} in the environment (or "
                                  f"in a --source-credentials FILE). {WHERE_TO_FIND['amplitude']}.")
            return self.values["AMPLITUDE_API_KEY"], self.values["AMPLITUDE_SECRET_KEY"]
        account, secret = (self.values.get(name) for name in MIXPANEL_SERVICE_NAMES)
        if account and secret:
            if not source.parameter("project_id"):
                raise ConfigError(f"{source.key}: a service account needs the project: add project_id=N (Mixpanel: "
                                  "Project settings → Overview → Project ID)")
            return account, secret
        if self.values.get(MIXPANEL_SECRET_NAME):
            return self.values[MIXPANEL_SECRET_NAME], ""
        if account or secret:
            half = MIXPANEL_SERVICE_NAMES[1] if account else MIXPANEL_SERVICE_NAMES[0]
            raise ConfigError(f"no Mixpanel credentials: {half} is not set (a service account needs both "
                              f"{' and '.join(MIXPANEL_SERVICE_NAMES)}). {WHERE_TO_FIND['mixpanel']}.")
        raise ConfigError(f"no Mixpanel credentials: set {' and '.join(MIXPANEL_SERVICE_NAMES)} (or the legacy "
                          f"{MIXPANEL_SECRET_NAME}) in the environment, or in a --source-credentials FILE. "
                          f"{WHERE_TO_FIND['mixpanel']}.")

    def scrub(self, text: str) -> str:
        """``text`` without any credential, nor the Basic token made of them (servers may echo a request)."""
        secrets = {value for value in self.values.values() if len(value) >= 4}
        for user, password in self._pairs():
            secrets.add(base64.b64encode(f"{user}:{password}".encode()).decode())
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, REPLACEMENT)
        return text

    def _pairs(self) -> list[tuple[str, str]]:
        get = self.values.get
        pairs = [(get(AMPLITUDE_NAMES[0], ""), get(AMPLITUDE_NAMES[1], "")),
                 (get(MIXPANEL_SERVICE_NAMES[0], ""), get(MIXPANEL_SERVICE_NAMES[1], "")),
                 (get(MIXPANEL_SECRET_NAME, ""), "")]
        return [(user, password) for user, password in pairs if user]


def load_credentials(path: str | None) -> Credentials:
    """The environment's credentials, overridden by those of the ``--source-credentials`` file when given."""
    values = {name: os.environ[name] for name in KNOWN_NAMES if os.environ.get(name)}
    if path is not None:
        values.update(_read_file(Path(path)))
    return Credentials(values)


def _read_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"--source-credentials {path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--source-credentials {path}: not a UTF-8 text file of NAME=value lines") from None
    values = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, equals, value = line.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if not equals or name not in KNOWN_NAMES:  # the line itself is never repeated: it may hold a secret
            raise ConfigError(f"--source-credentials {path}, line {number}: write NAME=value with NAME one of "
                              f"{', '.join(KNOWN_NAMES)}")
        values[name] = value
    return values
