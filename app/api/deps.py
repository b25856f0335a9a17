"""Dependencies shared by the routes: the database session and the API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.errors import Unauthorized
from app.db.session import get_db

SessionDep = Annotated[Session, Depends(get_db)]


def require_api_key(
    x_api_key: Annotated[
        str | None, Header(description="Needed on write routes when API_KEY is set.")
    ] = None,
) -> None:
    """Let the request through when no API_KEY is configured or the header matches it."""
    expected = get_settings().api_key
    if not expected:
        return
    if x_api_key is None:
        raise Unauthorized("this route needs the X-API-Key header (API_KEY is set on the server)")
    # Constant-time comparison: the time taken says nothing about how much of the key matched.
    if not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise Unauthorized("the X-API-Key header does not match the server's API_KEY")


ApiKeyDep = Depends(require_api_key)
