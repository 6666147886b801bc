"""Session tokens: HMAC of the session name with the shared secret.

The scheduler gives the token to Jupyter; the gateway hands it to the person who launched. No
token is ever stored, labelled or sent on the broker, and both sides can recompute it after a
restart.
"""

from __future__ import annotations

import hashlib
import hmac


def session_token(secret: str, session: str) -> str:
    return hmac.new(secret.encode(), f"session:{session}".encode(), hashlib.sha256).hexdigest()[:48]
