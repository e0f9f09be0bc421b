"""Registry authentication and authorization: htpasswd (bcrypt) Basic auth, Docker token auth
(JWT resource server plus a built-in ``/auth/token`` issuer) and per-repository access rules.

``auth_app(registry_asgi_app, registry_settings)`` wraps the registry app (returns it unchanged
when no auth is configured). Rules are described in :mod:`ipfsreg.auth.policy`.
"""

from ipfsreg.auth.htpasswd import Htpasswd, HtpasswdUnavailable, parse_htpasswd
from ipfsreg.auth.middleware import TOKEN_PATH, AuthApp, auth_app, auth_enabled
from ipfsreg.auth.policy import Access, AuthConfigError, Policy, Principal, Resource, parse_rule, parse_scope
from ipfsreg.auth.token import InvalidToken, TokenIssuer, TokenVerifier

__all__ = [
    "TOKEN_PATH",
    "Access",
    "AuthApp",
    "AuthConfigError",
    "Htpasswd",
    "HtpasswdUnavailable",
    "InvalidToken",
    "Policy",
    "Principal",
    "Resource",
    "TokenIssuer",
    "TokenVerifier",
    "auth_app",
    "auth_enabled",
    "parse_htpasswd",
    "parse_rule",
    "parse_scope",
]
